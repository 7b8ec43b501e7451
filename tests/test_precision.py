"""Training precision and layout: the user's precision is kept, evaluation and export stay FP32, channels-last.

See :mod:`anomalib_rdx.components.precision`.
"""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

import anomalib_rdx
from anomalib_rdx.components import flat_cosine_distance
from anomalib_rdx.components.precision import channels_last
from anomalib_rdx.data import SAMPLE_DATA_ROOT

SIZE = (64, 64)


def _model(name: str, teacher: dict) -> anomalib_rdx.RDExpert:
    model_class = getattr(anomalib_rdx, name)
    return model_class(**teacher, pre_processor=model_class.configure_pre_processor(SIZE))


def _fit(model: torch.nn.Module, output: Path, steps: int = 1, **engine_arguments: object) -> Engine:
    """Fit ``steps`` steps on the bundled sample through anomalib's Engine; validation off."""
    seed_everything(0)
    datamodule = MVTecAD(
        root=SAMPLE_DATA_ROOT, category="magnetic_tile", train_batch_size=4, eval_batch_size=4, num_workers=0,
        val_split_mode="none",
    )  # fmt: skip
    engine = Engine(
        max_steps=steps, logger=False, default_root_dir=output, enable_progress_bar=False, limit_val_batches=0,
        **engine_arguments,
    )  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    return engine


def test_models_leave_the_precision_to_the_user(lite0_teacher: dict, tmp_path: Path) -> None:
    """No precision in trainer_arguments: a default Engine trains FP32, an explicit bf16 is kept."""
    for name in ("RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"):
        assert "precision" not in _model(name, lite0_teacher).trainer_arguments
    assert _fit(_model("MultiResolutionKD", lite0_teacher), tmp_path / "default").trainer.precision == "32-true"
    engine = _fit(_model("AugmentedRD", lite0_teacher), tmp_path / "bf16", precision="bf16-mixed")
    assert engine.trainer.precision == "bf16-mixed"


def test_evaluation_runs_in_fp32_under_mixed_precision(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    """Validation (and test/predict, which call it) ignores autocast: thresholds fit the FP32 export."""
    from anomalib.data import ImageBatch

    for name in ("RDExpert", "MultiResolutionKD"):
        model = _model(name, lite0_teacher).eval()
        with torch.no_grad():
            reference = model.validation_step(ImageBatch(image=sample_images)).anomaly_map
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = model.validation_step(ImageBatch(image=sample_images)).anomaly_map
        assert mixed.dtype == torch.float32, name
        torch.testing.assert_close(mixed, reference)


def test_channels_last_images_give_the_same_losses(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    """The training steps' channels-last layout changes the memory order, not the math."""
    model = _model("DualStudentKD", lite0_teacher).train()
    torch.manual_seed(0)
    contiguous = model.loss(*model.model(sample_images))
    layout = model.loss(*model.model(channels_last(sample_images)))
    torch.testing.assert_close(layout, contiguous, rtol=1e-4, atol=1e-5)
    maps = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    others = [torch.rand_like(m) for m in maps]
    torch.testing.assert_close(
        flat_cosine_distance([channels_last(m) for m in maps], [channels_last(o) for o in others]),
        flat_cosine_distance(maps, others),
    )


@pytest.mark.slow
def test_bf16_training_exports_an_fp32_model(lite0_teacher: dict, tmp_path: Path) -> None:
    """After a bf16 mixed-precision fit the weights and the OpenVINO IR are FP32."""
    import openvino as ov

    model = _model("RDExpert", lite0_teacher)
    engine = _fit(model, tmp_path, steps=2, precision="bf16-mixed")
    assert engine.trainer.precision == "bf16-mixed"
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    xml = engine.export(model, export_type="openvino", export_root=tmp_path / "exported")
    ir = ov.Core().read_model(xml)
    floating = {
        node.get_output_element_type(0).get_type_name()
        for node in ir.get_ops()
        if node.get_type_name() == "Constant" and node.get_output_element_type(0).is_real()
    }
    assert floating == {"f32"}
    real_outputs = [output for output in ir.outputs if output.get_element_type().is_real()]  # also a bool label
    assert {output.get_any_name() for output in real_outputs} >= {"pred_score", "anomaly_map"}
    assert {output.get_element_type().get_type_name() for output in real_outputs} == {"f32"}
