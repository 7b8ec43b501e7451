"""Exports that cannot be faithful fail with an error naming the reason, never a silent wrong graph."""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from torch import nn

from anomalib_rdx import AugmentedRD, MultiResolutionKD
from anomalib_rdx.components.export import ExportError, quantize_int8
from anomalib_rdx.data import SAMPLE_DATA_ROOT
from anomalib_rdx.inference import list_images, load_inferencer


class _EigenvalueNormalization(nn.Module):
    """Normalisation that adds a term computed with an operator ONNX cannot express (linalg.eig)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + torch.linalg.eigvals(images[:, :, :2, :2]).real.mean() * 0


def test_unexportable_operation_is_named(tmp_path: Path, lite0_teacher: dict) -> None:
    model = AugmentedRD(**lite0_teacher, pre_processor=AugmentedRD.configure_pre_processor((64, 64))).eval()
    model.model.normalize = _EigenvalueNormalization()
    with pytest.raises(ExportError, match=r"AugmentedRD cannot be exported to ONNX: .*operation aten\.linalg_eig"):
        model.to_onnx(tmp_path, input_size=(64, 64))


def test_gradient_localization_refuses_export(tmp_path: Path, lite0_teacher: dict) -> None:
    model = MultiResolutionKD(
        **lite0_teacher,
        localization="smoothgrad",
        pre_processor=MultiResolutionKD.configure_pre_processor((64, 64)),
    )
    with pytest.raises(ExportError, match=r"localization='smoothgrad' cannot be exported.*backward pass"):
        model.to_openvino(tmp_path, input_size=(64, 64))
    assert not any(tmp_path.rglob("*.xml"))


@pytest.mark.parametrize("split", ["from_test", "same_as_test"])
def test_int8_calibration_refuses_test_images(split: str) -> None:
    datamodule = MVTecAD(root=SAMPLE_DATA_ROOT, category="magnetic_tile", val_split_mode=split, num_workers=0)
    with pytest.raises(ValueError, match=rf"INT8 calibration would read test images \(val_split_mode='{split}'\)"):
        quantize_int8(model=None, datamodule=datamodule)


def test_int8_needs_a_datamodule() -> None:
    with pytest.raises(ValueError, match="INT8_PTQ needs a datamodule"):
        quantize_int8(model=None, datamodule=None)


def test_serving_without_an_exported_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"No exported OpenVINO model at {tmp_path / 'model.xml'}"):
        load_inferencer(tmp_path / "model.xml")


def test_serving_an_empty_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"No images to predict in {tmp_path / 'empty'}"):
        list_images(tmp_path / "empty")
