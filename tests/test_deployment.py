"""The deployment benchmark's PatchCore reference row: a graph anomalib exports at a static batch.

anomalib exports its PatchCore with the batch fixed at 2 (its graph bakes the example input's batch into
its feature resizing), and anomalib's own INT8_PTQ cannot calibrate such a graph from batches of another
size. The benchmark exports it again at each measured batch size, quantises it with full batches and
measures its AUROC at batch 1; these tests run that path on a trained PatchCore.
"""

from pathlib import Path

import pytest

from anomalib_rdx.benchmark import BenchmarkConfig
from anomalib_rdx.benchmark import run_one as run_accuracy
from anomalib_rdx.benchmark.deployment import DeploymentConfig, run_one, static_batch
from anomalib_rdx.data import SAMPLE_DATA_ROOT, make_mvtec_subset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def patchcore_row(tmp_path_factory: pytest.TempPathFactory, lite0_weights: Path) -> dict:
    root = tmp_path_factory.mktemp("patchcore")
    make_mvtec_subset(SAMPLE_DATA_ROOT / "magnetic_tile", root / "magnetic_tile", 16, 4, 2)
    config = BenchmarkConfig(root=str(root), backbone_weights=str(lite0_weights), num_workers=0)
    trained = run_accuracy("Patchcore", config, root / "bench")
    checkpoint = root / "bench" / trained["checkpoint"]
    deployment = DeploymentConfig(root=str(root), batch_sizes=[1, 3], warmup=1, repeats=1)
    return run_one("Patchcore", deployment, root / "deployment", checkpoint) | {"benchmark": trained}


def test_patchcore_is_measured_at_every_batch_size(patchcore_row: dict) -> None:
    assert patchcore_row["static_batch"] is True
    for runtime in ("torch", "openvino_fp32", "openvino_int8"):
        for batch in (1, 3):  # 3: neither anomalib's export batch (2) nor the calibration loader's (8)
            assert patchcore_row[f"latency_ms_b{batch}_{runtime}"] > 0


def test_patchcore_openvino_fp32_scores_as_pytorch(patchcore_row: dict) -> None:
    assert patchcore_row["test_images"] == patchcore_row["benchmark"]["test_images"] == 14
    for level in ("image", "pixel"):
        torch_auroc = patchcore_row[f"{level}_AUROC_torch"]
        assert patchcore_row[f"{level}_AUROC_openvino_fp32"] == pytest.approx(torch_auroc, abs=1e-3)
        assert 0.0 <= patchcore_row[f"{level}_AUROC_openvino_int8"] <= 1.0


def test_package_models_export_with_a_dynamic_batch(tmp_path: Path, lite0_weights: Path) -> None:
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine

    from anomalib_rdx import RDExpert

    model = RDExpert(
        backbone="efficientnet_lite0",
        backbone_weights=str(lite0_weights),
        pre_processor=RDExpert.configure_pre_processor((64, 64)),
        post_processor=False,
    )
    engine = Engine(logger=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    xml = engine.export(model, ExportType.OPENVINO, export_root=tmp_path, input_size=(64, 64))
    assert static_batch(xml) is None
