"""The package's INT8 keeps the image score in FP32 also where it is not read from the map.

MultiResolutionKD's paper score (``image_score="discrepancy"``) is computed from the expert's and the
cloner's features beside the anomaly map; with only the map head kept in FP32, NNCF quantised its
operations and the validation image AUROC on magnetic_tile fell from 0.92 to 0.60 (README, INT8 study).
"""

from pathlib import Path

import openvino as ov
import pytest

from anomalib_rdx import MultiResolutionKD
from anomalib_rdx.benchmark.deployment import DeploymentConfig, calibration_datamodule
from anomalib_rdx.components.export import map_head_nodes, quantize_int8, score_head_nodes
from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .openvino_helpers import export_openvino_ir, quantised_inputs

pytestmark = pytest.mark.slow

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def discrepancy_ir(tmp_path_factory: pytest.TempPathFactory, lite0_weights: Path) -> ov.Model:
    """MultiResolutionKD with the paper's score, exported to an OpenVINO FP32 model."""
    model = MultiResolutionKD(
        backbone="efficientnet_lite0",
        backbone_weights=str(lite0_weights),
        image_score="discrepancy",
        pre_processor=MultiResolutionKD.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
    )
    return export_openvino_ir(model, tmp_path_factory.mktemp("mkd_discrepancy"))


def test_discrepancy_score_has_its_own_operations(discrepancy_ir: ov.Model) -> None:
    beside_the_map = set(score_head_nodes(discrepancy_ir)) - set(map_head_nodes(discrepancy_ir))
    assert beside_the_map, "the discrepancy score should not be read from the smoothed map"


def test_int8_leaves_the_score_in_fp32(discrepancy_ir: ov.Model) -> None:
    datamodule = calibration_datamodule(DeploymentConfig(root=str(SAMPLE_DATA_ROOT), image_size=IMAGE_SIZE))
    score_path = score_head_nodes(discrepancy_ir)
    quantised = quantize_int8(discrepancy_ir.clone(), datamodule)
    assert quantised_inputs(quantised, score_path) == []
    # the networks are still quantised
    assert any(op.get_type_name() == "FakeQuantize" for op in quantised.get_ops())
