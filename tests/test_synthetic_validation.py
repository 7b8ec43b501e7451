"""The visible synthetic validation split: how visible its anomalies are, reproducibility, the callback."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_rdx import RDExpert
from anomalib_rdx.data import SAMPLE_DATA_ROOT, SyntheticValidation
from anomalib_rdx.data.synthetic import ANOMALIB_BLEND_FACTOR, BlendedSyntheticDataset, blended_anomalies

SAMPLE_IMAGE = sorted((SAMPLE_DATA_ROOT / "magnetic_tile" / "train" / "good").glob("*.png"))[0]


def _copies_of_one_image(count: int) -> pd.DataFrame:
    """``count`` normal samples of the same real image, so every anomaly's source is known."""
    return pd.DataFrame(
        {
            "image_path": [str(SAMPLE_IMAGE)] * count,
            "label": ["normal"] * count,
            "label_index": [0] * count,
            "mask_path": [""] * count,
            "split": ["train"] * count,
        }
    )


def _at_input_size(path: str) -> torch.Tensor:
    """An image as the models see it: resized to 256x256."""
    return torch.nn.functional.interpolate(read_image(path, as_tensor=True)[None], size=(256, 256), mode="bilinear")[0]


def _share_below_texture(samples: pd.DataFrame) -> float:
    """Share of the anomalies whose mean change inside the mask is below the tile's own local texture variation."""
    source = _at_input_size(str(SAMPLE_IMAGE))
    texture = (source - torch.nn.functional.avg_pool2d(source[None], 9, 1, 4, count_include_pad=False)[0]).abs().mean()
    anomalous = samples[samples.label_index == 1]
    below = 0
    for image_path, mask_path in zip(anomalous.image_path, anomalous.mask_path, strict=True):
        mask = _at_input_size(mask_path)[0] > 0.5
        assert mask.any(), f"{mask_path}: empty mask"
        change = (_at_input_size(image_path) - source).abs().mean(0)[mask].mean()
        below += int(change < texture)
    return below / len(anomalous)


def test_anomalies_are_visible_where_anomalibs_are_not(tmp_path: Path) -> None:
    """At (0.1, 1.0) almost no anomaly is fainter than the tile's texture; at anomalib's (0.01, 0.2) many are."""
    normal = _copies_of_one_image(80)
    visible = blended_anomalies(normal, tmp_path / "visible", (0.1, 1.0), seed=0)
    faint = blended_anomalies(normal, tmp_path / "faint", ANOMALIB_BLEND_FACTOR, seed=0)
    assert (visible.label_index == 1).sum() == 40
    assert (visible.label_index == 0).sum() == 40
    assert _share_below_texture(visible) <= 0.1
    assert _share_below_texture(faint) >= 0.15  # 0.225 on this image; 0.40 over 80 training images


def test_split_is_reproducible_and_leaves_the_global_random_state(tmp_path: Path) -> None:
    """Same seed, same anomalies, whatever ran before; the training's random stream is not consumed."""
    normal = _copies_of_one_image(8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = blended_anomalies(normal, tmp_path / "a", (0.1, 1.0), seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    torch.manual_seed(999)
    second = blended_anomalies(normal, tmp_path / "b", (0.1, 1.0), seed=5)
    for path_a, path_b in zip(first.image_path, second.image_path, strict=True):
        assert torch.equal(read_image(path_a, as_tensor=True), read_image(path_b, as_tensor=True))


def test_bad_blend_and_anomalous_sources_are_refused(tmp_path: Path) -> None:
    """A blend outside [0, 1] or reversed, or an anomalous source image, is named in the error."""
    normal = _copies_of_one_image(4)
    with pytest.raises(ValueError, match="blend_factor"):
        blended_anomalies(normal, tmp_path, (0.5, 0.1), seed=0)
    with pytest.raises(ValueError, match="blend_factor"):
        blended_anomalies(normal, tmp_path, (0.1, 1.5), seed=0)
    with pytest.raises(ValueError, match="blend_factor"):
        SyntheticValidation((-0.1, 0.5))
    with pytest.raises(ValueError, match="normal images only"):
        blended_anomalies(normal.assign(label_index=1), tmp_path, (0.1, 1.0), seed=0)


def _sample_datamodule(split_mode: str) -> MVTecAD:
    return MVTecAD(
        root=SAMPLE_DATA_ROOT,
        category="magnetic_tile",
        eval_batch_size=4,
        num_workers=0,
        val_split_mode=split_mode,
        val_split_ratio=0.2,
        seed=0,
    )


def test_callback_replaces_the_split_with_the_same_held_out_images(tmp_path: Path, lite0_teacher: dict) -> None:
    """A real validation run: anomalib's held-out images, half of them re-made, the images kept on disk."""
    datamodule = _sample_datamodule("synthetic")
    model = RDExpert(**lite0_teacher, use_expert=False, pre_processor=RDExpert.configure_pre_processor((64, 64)))
    engine = Engine(callbacks=[SyntheticValidation((0.1, 1.0))], default_root_dir=tmp_path, logger=False, devices=1)
    engine.validate(model, datamodule=datamodule, verbose=False)
    validation = datamodule.val_data
    assert isinstance(validation, BlendedSyntheticDataset)
    held_out = set(validation.source_samples.image_path)
    normal = validation.samples[validation.samples.label_index == 0]
    anomalous = validation.samples[validation.samples.label_index == 1]
    assert set(normal.image_path) <= held_out
    assert len(normal) + len(anomalous) == len(held_out)
    written = tmp_path / "synthetic_validation" / "seed0_blend0.1-1" / "abnormal"
    assert all(Path(path).parent == written and Path(path).is_file() for path in anomalous.image_path)
    assert set(datamodule.train_data.samples.image_path).isdisjoint(held_out)
    assert engine.trainer.num_val_batches == [-(-len(validation) // 4)]  # validated on this split


def test_callback_refuses_other_split_modes(tmp_path: Path, lite0_teacher: dict) -> None:
    """Without anomalib's synthetic split there are no held-out normal images to re-make: a clear error."""
    datamodule = _sample_datamodule("from_test")
    model = RDExpert(**lite0_teacher, use_expert=False, pre_processor=RDExpert.configure_pre_processor((64, 64)))
    engine = Engine(callbacks=[SyntheticValidation()], default_root_dir=tmp_path, logger=False, devices=1)
    with pytest.raises(ValueError, match="val_split_mode='synthetic'"):
        engine.validate(model, datamodule=datamodule, verbose=False)


def test_int8_study_split_is_replaced_without_a_trainer(tmp_path: Path) -> None:
    """A datamodule set up without a trainer (the INT8 study) gets the split; asking again keeps or re-makes it."""
    from anomalib_rdx.benchmark.deployment import DeploymentConfig
    from anomalib_rdx.benchmark.int8_study import synthetic_validation
    from anomalib_rdx.data.synthetic import replace_validation_split

    config = DeploymentConfig(root=str(SAMPLE_DATA_ROOT), image_size=64)
    anomalib_split = synthetic_validation(config)
    datamodule = synthetic_validation(config, (0.1, 1.0), tmp_path)
    validation = datamodule.val_data
    assert isinstance(validation, BlendedSyntheticDataset)
    assert set(validation.source_samples.image_path) == set(anomalib_split.val_data.source_samples.image_path)
    assert replace_validation_split(datamodule, (0.1, 1.0), tmp_path, seed=0) is validation
    other = replace_validation_split(datamodule, (0.2, 0.5), tmp_path, seed=0)
    assert other is not validation
    assert other.blend_factor == (0.2, 0.5)
    assert set(other.source_samples.image_path) == set(validation.source_samples.image_path)
    image = datamodule.val_dataloader().dataset[0].image
    assert tuple(image.shape[-2:]) == (64, 64)  # the study's resize still applies
