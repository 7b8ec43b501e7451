"""What the package's INT8 keeps in FP32 besides the map head: the convolutions that read the image and the comparison.

On magnetic_tile (README, "INT8 within 0.01 of FP32") quantising the teacher's and the expert's stem
and first block, and the student's output convolutions, cost RDExpert most of its INT8 loss. These tests
check on a real exported RDExpert graph that the graph rules find exactly those convolutions, and that
``quantize_int8`` leaves them unquantised while it still quantises the rest of the networks.
"""

import argparse
from pathlib import Path

import openvino as ov
import pytest
import torch

from anomalib_rdx import RDExpert
from anomalib_rdx.benchmark.deployment import DeploymentConfig, calibration_datamodule
from anomalib_rdx.benchmark.int8_study import (
    module_labels,
    module_variant,
    parse_variant,
    variant_rule,
    weight_parameter_name,
)
from anomalib_rdx.components.export import comparison_nodes, image_convolution_nodes, quantize_int8
from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .openvino_helpers import export_openvino_ir, quantised_inputs

pytestmark = pytest.mark.slow

IMAGE_SIZE = 64


def weight_name(convolution: ov.Node) -> str:
    """The parameter name of a convolution's weight ('' where constant folding dropped it: depthwise kernels)."""
    return weight_parameter_name(convolution) or ""


@pytest.fixture(scope="module")
def rd_expert_ir(tmp_path_factory: pytest.TempPathFactory, lite0_weights: Path) -> ov.Model:
    """RDExpert comparing the student with teacher and expert (the default), exported to an OpenVINO FP32 model."""
    model = RDExpert(
        backbone="efficientnet_lite0",
        backbone_weights=str(lite0_weights),
        map_reference="both",
        pre_processor=RDExpert.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
    )
    # Training moves the teacher away from the expert; untrained, the two are the same network and
    # OpenVINO merges their identical operations into one.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.model.teacher.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    return export_openvino_ir(model, tmp_path_factory.mktemp("rd_expert_ir"))


def convolutions(model: ov.Model) -> dict[str, ov.Node]:
    return {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name().endswith("Convolution")}


def test_image_convolutions_are_each_image_readers_stem_and_first_block(rd_expert_ir: ov.Model) -> None:
    convs = convolutions(rd_expert_ir)
    names = image_convolution_nodes(rd_expert_ir, 3)
    weights = sorted(weight_name(convs[name]) for name in names)
    # teacher and expert read the image: conv_stem, blocks.0's depthwise (weight name folded away) and pointwise
    assert len(names) == 6
    layers = ("conv_stem", "blocks.0.0.conv_pw")
    named = [f"model.{net}.feature_extractor.{layer}.weight" for net in ("teacher", "expert") for layer in layers]
    assert weights == sorted([*named, "", ""])
    # depth 1 is the two stems alone
    assert sorted(weight_name(convs[name]) for name in image_convolution_nodes(rd_expert_ir, 1)) == [
        "model.expert.feature_extractor.conv_stem.weight",
        "model.teacher.feature_extractor.conv_stem.weight",
    ]


def test_comparison_reaches_the_students_output_convolutions(rd_expert_ir: ov.Model) -> None:
    convs = convolutions(rd_expert_ir)
    compared = {weight_name(convs[name]) for name in comparison_nodes(rd_expert_ir) if name in convs}
    assert {f"model.decoder.stages.{stage}.2.weight" for stage in range(3)} <= compared
    # it does not walk into the trunks: no stem, no first block, no bottleneck
    assert not any("conv_stem" in name or "blocks.0." in name or "bottleneck" in name for name in compared)


def test_int8_keeps_image_convolutions_and_comparison_in_fp32(rd_expert_ir: ov.Model) -> None:
    convs = convolutions(rd_expert_ir)
    compared = {name for name in comparison_nodes(rd_expert_ir) if name in convs}
    kept = set(image_convolution_nodes(rd_expert_ir, 3)) | compared
    datamodule = calibration_datamodule(DeploymentConfig(root=str(SAMPLE_DATA_ROOT), image_size=IMAGE_SIZE))
    quantised = quantize_int8(rd_expert_ir.clone(), datamodule)
    assert quantised_inputs(quantised, kept) == []
    # the rest of the networks is quantised: most convolutions read a FakeQuantize
    others = set(convolutions(quantised)) - kept
    assert len(quantised_inputs(quantised, others)) > 0.8 * len(others)


def test_study_labels_operations_with_their_modules(rd_expert_ir: ov.Model) -> None:
    convs = convolutions(rd_expert_ir)
    labels = module_labels(rd_expert_ir)
    assert set(convs) - set(labels) == set()
    for name in image_convolution_nodes(rd_expert_ir, 3):  # depthwise kernels take their block's label
        assert labels[name].startswith(("model.teacher.feature_extractor.", "model.expert.feature_extractor."))
    decoder = {name for name in convs if labels[name].startswith("model.decoder.")}
    kept = set(module_variant("fp32:model.decoder")(rd_expert_ir))
    assert decoder
    assert decoder <= kept
    assert not any(labels[name].startswith("model.teacher.") for name in kept if name in convs)


def test_study_depth_variant_keeps_that_many_image_convolutions(rd_expert_ir: ov.Model) -> None:
    stems = set(image_convolution_nodes(rd_expert_ir, 1))
    first_blocks = set(image_convolution_nodes(rd_expert_ir, 3)) - stems
    stems_only, _ = variant_rule(parse_variant("image_comparison:1"))
    kept = set(stems_only(rd_expert_ir))
    assert stems <= kept
    assert not first_blocks & kept
    assert set(comparison_nodes(rd_expert_ir)) <= kept
    no_image, _ = variant_rule(parse_variant("image_comparison:0"))
    assert not set(image_convolution_nodes(rd_expert_ir, 3)) & set(no_image(rd_expert_ir))
    with pytest.raises(argparse.ArgumentTypeError, match="image_comparison:<depth>"):
        parse_variant("image_comparison:stem")
