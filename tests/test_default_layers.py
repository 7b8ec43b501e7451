"""Default layers (``layers=None``): the paper's for the paper's backbone, strides 4, 8, 16 for any other CNN."""

from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_rdx import AugmentedRD, DualStudentKD, RDExpert
from anomalib_rdx.components import BackboneError, DistillationModule, describe_feature_pyramid
from anomalib_rdx.components.backbone import resolve_layers
from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .cli_helpers import data_args, only_checkpoint, run_anomalib

MODELS = (RDExpert, AugmentedRD, DualStudentKD)
PAPER_LAYERS = ["layer1", "layer2", "layer3"]
# CNN families timm builds offline with random weights; none but the ResNet has `layer1`-`layer3`.
BACKBONES = ("resnet18", "efficientnet_lite0", "mobilenetv3_large_100", "convnext_atto")
# VGG's stride-16 level has 512 channels: its students take about 15 s each to build, so it is checked
# for the level choice only.
LEVEL_ONLY_BACKBONES = ("vgg11_bn", "regnetx_002")


def _build(model_class: type[DistillationModule], **kwargs: object) -> DistillationModule:
    return model_class(pre_trained=False, pre_processor=model_class.configure_pre_processor((64, 64)), **kwargs)


@pytest.mark.parametrize("backbone", BACKBONES + LEVEL_ONLY_BACKBONES)
def test_default_levels_are_at_strides_4_8_16(backbone: str) -> None:
    layers = resolve_layers(backbone, None)
    assert describe_feature_pyramid(backbone, layers).reductions == (4, 8, 16)


@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_alone_builds_and_scores_real_images(
    model_class: type[DistillationModule], backbone: str, sample_images: torch.Tensor
) -> None:
    model = _build(model_class, backbone=backbone)
    # The resolved levels are what the checkpoint's hyperparameters record.
    assert describe_feature_pyramid(backbone, model.hparams.layers).reductions == (4, 8, 16)
    model.eval()
    with torch.no_grad():
        output = model.model(sample_images)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()
    # An untrained student does not reproduce the teacher: the map is not flat zero.
    assert output.anomaly_map.amax() > 0


@pytest.mark.parametrize(
    ("model_class", "paper_backbone"),
    [(RDExpert, "wide_resnet50_2"), (AugmentedRD, "wide_resnet50_2"), (DualStudentKD, "resnet18")],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_paper_backbone_gets_paper_layers(model_class: type[DistillationModule], paper_backbone: str) -> None:
    model = model_class(pre_trained=False)
    assert model.hparams.backbone == paper_backbone
    assert list(model.hparams.layers) == PAPER_LAYERS
    assert model.input_size == (256, 256)


def test_paper_layers_take_precedence_over_the_stride_rule() -> None:
    paper = {"vgg11_bn": ("features.6", "features.13", "features.20")}  # strides 2, 4, 8
    assert resolve_layers("vgg11_bn", None, paper) == list(paper["vgg11_bn"])
    assert resolve_layers("vgg11_bn", None) == ["features.13", "features.20", "features.27"]


def test_explicit_layers_are_kept(lite0_teacher: dict) -> None:
    model = _build(RDExpert, **lite0_teacher)  # layers [1, 2, 3]
    assert model.model.pyramid.indices == (1, 2, 3)
    model = _build(AugmentedRD, backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4", "blocks.6"])
    assert model.model.pyramid.reductions == (8, 16, 32)


@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
def test_backbone_without_such_levels_names_itself(model_class: type[DistillationModule]) -> None:
    # A vision transformer's levels all have stride 16.
    with pytest.raises(BackboneError, match=r"vit_tiny_patch16_224.*strides 4, 8.*pass `layers`"):
        _build(model_class, backbone="vit_tiny_patch16_224")


@pytest.mark.slow
def test_cli_backbone_flag_alone_trains(tmp_path: Path, lite0_weights: Path) -> None:
    run_anomalib(
        "fit",
        "--model", "anomalib_rdx.RDExpert",
        "--model.backbone", "efficientnet_lite0",
        "--model.backbone_weights", str(lite0_weights),
        *data_args(SAMPLE_DATA_ROOT),
        "--trainer.max_steps", "1",
        "--trainer.accelerator", "cpu",
        "--default_root_dir", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    checkpoint = torch.load(only_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert list(checkpoint["hyper_parameters"]["layers"]) == ["blocks.1", "blocks.2", "blocks.4"]
    assert checkpoint["hyper_parameters"]["gii_mode"] == "gated"
