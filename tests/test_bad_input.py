"""Messy dataset folders and foreign checkpoints fail early with errors that name the files.

Each case starts from a copy of the bundled real sample and damages one thing; training must stop
before anything is written, with an error that names the bad file. Images of 1 or 4 channels are
not errors: they are converted to RGB and scored.
"""

import shutil
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.engine import Engine
from PIL import Image

from anomalib_rdx import AugmentedRD, RDExpert
from anomalib_rdx.components.checkpoint import CheckpointMismatchError
from anomalib_rdx.data import SAMPLE_DATA_ROOT
from anomalib_rdx.data.validation import DatasetError

SIZE = (64, 64)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A writable copy of the bundled sample; returns its category folder."""
    category = tmp_path / "data" / "magnetic_tile"
    shutil.copytree(SAMPLE_DATA_ROOT / "magnetic_tile", category)
    return category


def _fit(category: Path, teacher: dict, output: Path, model_class: type = AugmentedRD, epochs: int = 1) -> Engine:
    datamodule = MVTecAD(
        root=category.parent, category=category.name, val_split_mode="synthetic", num_workers=0, train_batch_size=8
    )
    model = model_class(**teacher, pre_processor=model_class.configure_pre_processor(SIZE))
    engine = Engine(max_epochs=epochs, logger=False, default_root_dir=output, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    return engine


def _fit_fails_naming(category: Path, teacher: dict, tmp_path: Path, *names: str) -> None:
    output = tmp_path / "results"
    output.mkdir()
    earlier = output / "earlier_run.txt"
    earlier.write_text("results of an earlier run")
    with pytest.raises(DatasetError) as raised:
        _fit(category, teacher, output)
    for name in names:
        assert name in str(raised.value)
    assert earlier.read_text() == "results of an earlier run"
    # anomalib's engine makes its (empty) version folder first; no file is written or removed
    assert [p.relative_to(output) for p in output.rglob("*") if p.is_file()] == [Path("earlier_run.txt")]


def test_truncated_training_image_is_named(dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    image = dataset / "train" / "good" / "019.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    _fit_fails_naming(dataset, lite0_teacher, tmp_path, str(image))


def test_corrupt_test_image_is_named(dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    image = dataset / "test" / "crack" / "000.png"
    image.write_bytes(b"not an image at all" * 10)
    _fit_fails_naming(dataset, lite0_teacher, tmp_path, str(image))


def test_mask_of_another_size_is_named(dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    mask = next((dataset / "ground_truth" / "crack").glob("*.png"))
    Image.open(mask).resize((17, 23)).save(mask)
    _fit_fails_naming(dataset, lite0_teacher, tmp_path, str(mask), "17x23")


def test_mask_without_image_is_named(dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    image = next((dataset / "test" / "fray").glob("*.png"))
    image.unlink()
    mask = dataset / "ground_truth" / "fray" / f"{image.stem}_mask.png"
    _fit_fails_naming(dataset, lite0_teacher, tmp_path, str(mask), "mask without an image")


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_one_and_four_channel_images_are_scored(mode: str, dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    for path in [*dataset.glob("train/good/*.png"), *dataset.glob("test/*/*.png")]:
        Image.open(path).convert(mode).save(path)
    assert Image.open(next(dataset.glob("test/crack/*.png"))).mode == mode
    engine = _fit(dataset, lite0_teacher, tmp_path / "out")
    predictions = engine.predict(dataloaders=torch.utils.data.DataLoader(
        PredictDataset(dataset / "test" / "crack"), collate_fn=PredictDataset(dataset / "test").collate_fn
    ))  # fmt: skip
    scores = torch.cat([batch.pred_score.flatten() for batch in predictions])
    assert len(scores) == len(list((dataset / "test" / "crack").glob("*.png")))
    assert torch.isfinite(scores).all()
    assert all(batch.anomaly_map.shape[-2:] == SIZE for batch in predictions)


def test_checkpoint_of_another_model_is_refused(dataset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    engine = _fit(dataset, lite0_teacher, tmp_path / "out")
    checkpoint = next((tmp_path / "out").rglob("*.ckpt"))
    with pytest.raises(
        CheckpointMismatchError, match=rf"{checkpoint}.*holds an anomalib_rdx.AugmentedRD.*not RDExpert"
    ):
        RDExpert.load_from_checkpoint(checkpoint)
    rd_expert = RDExpert(**lite0_teacher, pre_processor=RDExpert.configure_pre_processor(SIZE))
    datamodule = MVTecAD(root=dataset.parent, category=dataset.name, val_split_mode="synthetic", num_workers=0)
    with pytest.raises(CheckpointMismatchError, match=r"holds an anomalib_rdx.AugmentedRD model, not RDExpert"):
        engine.test(rd_expert, datamodule=datamodule, ckpt_path=checkpoint)
