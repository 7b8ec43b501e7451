"""Run the real ``anomalib`` CLI in a subprocess and compare exported models with PyTorch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils import read_image
from anomalib.deploy import OpenVINOInferencer
from anomalib.models.components import AnomalibModule
from scipy.stats import spearmanr

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
# OpenVINO's CPU plugin runs FP32 IRs in bfloat16 on CPUs with AMX/AVX512-BF16 unless told otherwise;
# parity is measured at the IR's own precision.
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def run_anomalib(*args: str, cwd: Path, importable: Path | None = None) -> str:
    """Run ``anomalib <args>``; fail with its output if it exits non-zero.

    ``importable``: a folder put on ``PYTHONPATH`` (for class paths of test helpers).
    """
    env = {**os.environ, "PYTHONPATH": str(importable)} if importable else None
    result = subprocess.run(
        [ANOMALIB, *args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"anomalib {' '.join(args)} failed:\n{output[-4000:]}"
    return output


def model_args(class_path: str, weights: Path) -> list[str]:
    """A package model on the offline efficientnet_lite0 teacher at strides 4, 8, 16."""
    return [
        "--model", class_path,
        "--model.backbone", "efficientnet_lite0",
        "--model.layers", "[1, 2, 3]",
        "--model.backbone_weights", str(weights),
    ]  # fmt: skip


def data_args(root: Path, category: str = "magnetic_tile", val_split_mode: str = "synthetic") -> list[str]:
    """MVTecAD datamodule on an MVTec-layout folder; validation made of training images.

    ``synthetic`` (thresholds from synthetic anomalies of held-out training images) for training and
    testing, ``from_train`` (a tenth of the training images, normal and held out) for INT8 calibration.
    """
    return [
        "--data", "anomalib.data.MVTecAD",
        "--data.root", str(root),
        "--data.category", category,
        "--data.val_split_mode", val_split_mode,
        "--data.val_split_ratio", "0.2" if val_split_mode == "synthetic" else "0.1",
        "--data.train_batch_size", "8",
        "--data.eval_batch_size", "8",
        "--data.num_workers", "0",
    ]  # fmt: skip


def only_checkpoint(folder: Path) -> Path:
    """The single Lightning checkpoint written under ``folder``."""
    checkpoints = sorted(folder.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    return checkpoints[0]


def openvino_inferencer(xml: Path, workdir: Path) -> OpenVINOInferencer:
    """anomalib's inferencer at FP32, created in ``workdir`` (it writes ``openvino_cache/`` in the cwd)."""
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        return OpenVINOInferencer(path=xml, device="CPU", config=OPENVINO_FP32)
    finally:
        os.chdir(previous)


def openvino_torch_difference(
    model: AnomalibModule, xml: Path, images: list[Path], relative_error: float = 1e-4
) -> tuple[float, float]:
    """How far the OpenVINO IR's normalised maps and scores fall outside PyTorch's FP32 error band.

    Both sides run the whole exported pipeline (resize, model, the post-processor's normalisation) on
    the same image files. The post-processor's calibration is monotone but can be steep: after one
    epoch on the test subset, DualStudentKD's normal map maxima span 2.89-2.96 of raw values near 3, so
    a raw error of 1e-5 of the values moves the normalised map by 5e-4, and a fixed tolerance of 1e-3
    on normalised values passed on one CPU and failed on another (1.3e-3) with the same export. So
    PyTorch's raw outputs are moved by ``relative_error`` of their largest magnitude both ways and
    normalised; the returned figures are how far OpenVINO's values lie outside that band (0 inside it),
    largest over all maps and over all scores. 1e-4 is above the FP32 differences of two convolution
    libraries and far below any export defect (a missing blur or a wrong resize moves maps by percents).
    """
    inferencer = openvino_inferencer(xml, xml.parent)
    model.eval()
    post_processor = model.post_processor
    excess = {"anomaly_map": 0.0, "pred_score": 0.0}
    for path in images:
        image = read_image(path, as_tensor=True)
        with torch.no_grad():
            raw = model.model(model.pre_processor(image[None]))
            band = [
                post_processor(
                    InferenceBatch(
                        pred_score=raw.pred_score + sign * relative_error * raw.pred_score.abs().max(),
                        anomaly_map=raw.anomaly_map + sign * relative_error * raw.anomaly_map.abs().max(),
                    )
                )
                for sign in (-1.0, 1.0)
            ]
        actual = inferencer.predict(image)
        for name, largest in excess.items():
            value = np.asarray(getattr(actual, name)).squeeze()
            low, high = (getattr(output, name).numpy().squeeze() for output in band)
            outside = np.maximum(np.maximum(low - value, value - high), 0.0)
            excess[name] = max(largest, float(outside.max()))
    return excess["anomaly_map"], excess["pred_score"]


def openvino_agreement(reference: Path, other: Path, images: list[Path]) -> tuple[float, float]:
    """How alike two IRs of one model rank ``images`` (both run at FP32 inference precision).

    Returns the Spearman rank correlation (tied values share their mean rank) of the images' map maxima
    and of all their normalised map pixels: the orders that image and pixel AUROC read. The image order is
    read from the maps, not from ``pred_score``: the post-processing clips the normalised score to
    ``[0, 1]``, and a one-epoch MultiResolutionKD's scores were clipped for 65 of 80 images (ties at 0 and
    1, rank correlation 0.72) while the maxima of the same maps ranked alike (0.991).
    """
    outputs = []
    for xml in (reference, other):
        inferencer = openvino_inferencer(xml, xml.parent)
        predictions = [inferencer.predict(read_image(path, as_tensor=True)) for path in images]
        image_maps = [np.asarray(p.anomaly_map, dtype=np.float64).ravel() for p in predictions]
        scores = np.array([image_map.max() for image_map in image_maps])
        outputs.append((scores, np.concatenate(image_maps)))
    (reference_scores, reference_maps), (scores, maps) = outputs
    return float(spearmanr(reference_scores, scores).statistic), float(spearmanr(reference_maps, maps).statistic)
