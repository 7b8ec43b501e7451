"""Training precision and layout: the model's ``training_precision``, FP32 depthwise layers, evaluation and
export in FP32, channels-last, unused teacher blocks dropped.

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
from anomalib_rdx.components.precision import (
    FP32Conv2d,
    channels_last,
    cpu_has_native_bf16,
    keep_depthwise_convolutions_fp32,
    resolve_training_precision,
)
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


class ConvolutionDtypes:
    """Forward hooks recording (output dtype, gradients on) of a pointwise and a depthwise teacher convolution."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        convolutions = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
        self.pointwise = next(m for m in convolutions if m.groups == 1 and m.kernel_size == (1, 1))
        self.depthwise = next(m for m in convolutions if m.groups > 1)
        self.seen: dict[str, set] = {"pointwise": set(), "depthwise": set()}
        self.pointwise.register_forward_hook(self._recorder("pointwise"))
        self.depthwise.register_forward_hook(self._recorder("depthwise"))

    def _recorder(self, kind: str) -> object:
        def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            del module, inputs
            self.seen[kind].add((output.dtype, torch.is_grad_enabled()))  # _fit runs no validation

        return record


@pytest.mark.parametrize(
    ("name", "precision"),
    [("RDExpert", "bf16-mixed"), ("RDExpert", "32"), ("AugmentedRD", "bf16-mixed"), ("AugmentedRD", "32")],
)
def test_training_precision_is_the_models_argument(
    lite0_teacher: dict, tmp_path: Path, name: str, precision: str
) -> None:
    """``training_precision`` decides the training steps' precision; depthwise layers with gradients stay FP32."""
    model = _model(name, lite0_teacher | {"training_precision": precision})
    assert "precision" not in model.trainer_arguments  # the user's trainer settings are never overridden
    dtypes = ConvolutionDtypes(model.model.teacher)
    _fit(model, tmp_path)
    pointwise = {dtype for dtype, _ in dtypes.seen["pointwise"]}
    if precision == "32":
        assert pointwise == {torch.float32}
        assert {dtype for dtype, _ in dtypes.seen["depthwise"]} == {torch.float32}
    else:
        assert pointwise == {torch.bfloat16}
        # RDExpert's teacher is trained: FP32 where gradients flow, bf16 in its no-grad evaluation pass.
        # AugmentedRD's teacher is frozen: every pass is without gradients, so bf16.
        expected = {(torch.float32, True), (torch.bfloat16, False)} if name == "RDExpert" else {(torch.bfloat16, False)}
        assert dtypes.seen["depthwise"] == expected
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


def test_auto_precision_follows_the_cpu_and_bad_values_are_refused(lite0_teacher: dict) -> None:
    """``"auto"`` is bf16 exactly on CPUs with bfloat16 instructions; an unknown value names the argument."""
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32"
    assert resolve_training_precision("auto", torch.device("cpu")) == expected
    assert resolve_training_precision("32", torch.device("cpu")) == "32"
    assert _model("MultiResolutionKD", lite0_teacher).training_precision == "auto"
    with pytest.raises(ValueError, match="training_precision"):
        _model("DualStudentKD", lite0_teacher | {"training_precision": "fp16"})


def test_fp32_convolution_is_nn_conv2d_outside_autocast() -> None:
    """The switched class keeps weights and state-dict keys; without autocast it computes what nn.Conv2d does."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 4, 1))
    images = torch.rand(2, 8, 16, 16, requires_grad=True)
    reference = network(images)
    keys = list(network.state_dict())
    assert keep_depthwise_convolutions_fp32(network) == 1
    assert isinstance(network[0], FP32Conv2d)
    assert type(network[1]) is torch.nn.Conv2d
    assert list(network.state_dict()) == keys
    torch.testing.assert_close(network(images), reference, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert network[0](images).dtype == torch.float32  # differentiated: FP32
        with torch.no_grad():
            assert network[0](images).dtype == torch.bfloat16  # no backward to come: bf16's fast forward


def test_unused_teacher_blocks_are_dropped_without_changing_features(lite0_teacher: dict) -> None:
    """efficientnet_lite0 at strides 4-16 runs 5 of its 7 stages; features equal timm's whole network's."""
    import timm

    from anomalib_rdx.components.backbone import build_feature_extractor

    teacher, _ = build_feature_extractor(
        lite0_teacher["backbone"], lite0_teacher["layers"], backbone_weights=lite0_teacher["backbone_weights"]
    )
    assert len(teacher.feature_extractor.blocks) == 5
    whole = timm.create_model("efficientnet_lite0", features_only=True, out_indices=[1, 2, 3]).eval()
    missing = whole.load_state_dict(teacher.feature_extractor.state_dict(), strict=False).missing_keys
    assert missing
    assert all(key.startswith(("blocks.5.", "blocks.6.")) for key in missing)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for dropped, kept in zip(teacher.eval()(images).values(), whole(images), strict=True):
            torch.testing.assert_close(dropped, kept, rtol=0, atol=0)
    # A state dict saved with the dropped blocks (checkpoints of earlier releases) still loads strictly.
    teacher.feature_extractor.load_state_dict(whole.state_dict(), strict=True)
    # ResNets' feature networks already stop at the deepest level: nothing to drop.
    resnet, _ = build_feature_extractor("resnet18", [1, 2, 3], pre_trained=False)
    assert [name for name, _ in resnet.feature_extractor.named_children()][-1] == "layer3"


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

    model = _model("RDExpert", lite0_teacher | {"training_precision": "bf16-mixed"})
    engine = _fit(model, tmp_path, steps=2)
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
