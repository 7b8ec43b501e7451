"""Bad input fails with an error that names the file, folder or argument."""

import shutil
from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_rdx import RDExpert
from anomalib_rdx.data import SAMPLE_DATA_ROOT


def _fit(root: Path, teacher: dict, workdir: Path) -> None:
    datamodule = MVTecAD(root=root, category="magnetic_tile", val_split_mode="synthetic", num_workers=0)
    model = RDExpert(**teacher, pre_processor=RDExpert.configure_pre_processor((64, 64)))
    Engine(max_epochs=1, logger=False, default_root_dir=workdir).fit(model, datamodule=datamodule)


def test_empty_train_folder_names_it(tmp_path: Path, lite0_teacher: dict) -> None:
    category = tmp_path / "data" / "magnetic_tile"
    (category / "train" / "good").mkdir(parents=True)
    shutil.copytree(SAMPLE_DATA_ROOT / "magnetic_tile" / "test" / "good", category / "test" / "good")
    with pytest.raises(ValueError, match=r"No training images in '.*magnetic_tile'.*train/good"):
        _fit(tmp_path / "data", lite0_teacher, tmp_path / "out")


def test_empty_dataset_folder_names_it(tmp_path: Path, lite0_teacher: dict) -> None:
    (tmp_path / "data" / "magnetic_tile").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"Found 0 images in .*magnetic_tile"):
        _fit(tmp_path / "data", lite0_teacher, tmp_path / "out")
