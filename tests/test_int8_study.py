"""The INT8 study quantises a trained checkpoint several ways and scores each on validation and test."""

from pathlib import Path

import pytest

from anomalib_rdx.benchmark import BenchmarkConfig, run_one
from anomalib_rdx.benchmark.deployment import DeploymentConfig
from anomalib_rdx.benchmark.int8_study import VARIANTS, study
from anomalib_rdx.data import SAMPLE_DATA_ROOT

pytestmark = pytest.mark.slow


def test_each_variant_is_scored_on_validation_and_test(tmp_path: Path, lite0_weights: Path) -> None:
    config = BenchmarkConfig(
        root=str(SAMPLE_DATA_ROOT), backbone_weights=str(lite0_weights), image_size=64, epochs=1, num_workers=0
    )
    row = run_one("AugmentedRD-plain", config, tmp_path / "bench")
    checkpoint = tmp_path / "bench" / row["checkpoint"]
    workdir = tmp_path / "study"
    workdir.mkdir()
    variants = ["plain", "map_head"]
    deployment = DeploymentConfig(root=str(SAMPLE_DATA_ROOT), image_size=64)
    result = study("AugmentedRD-plain", checkpoint, deployment, variants, workdir)
    assert set(VARIANTS) >= set(variants)
    assert result["test_images"] == row["test_images"]
    assert result["validation_images"] > 0
    for split in ("validation", "test"):
        runtimes = {key.removeprefix("image_AUROC_") for key in result[split] if key.startswith("image_AUROC_")}
        assert runtimes == {"torch", "openvino_fp32", "int8_plain", "int8_map_head"}
        assert all(0.0 <= value <= 1.0 for value in result[split].values())
        # OpenVINO FP32 at f32 precision reproduces PyTorch
        assert result[split]["image_AUROC_openvino_fp32"] == pytest.approx(result[split]["image_AUROC_torch"], abs=1e-3)
    # the study's test split is the benchmark's: PyTorch's AUROC there is the benchmark's (raw vs served scores)
    assert result["test"]["image_AUROC_torch"] == pytest.approx(row["image_AUROC"], abs=0.02)
