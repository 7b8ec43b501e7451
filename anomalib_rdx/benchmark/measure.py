"""Measurements shared by the benchmarks: inference parameters, latency and peak memory of an artifact."""

import json
import subprocess
import sys
from pathlib import Path

from anomalib.models.components import AnomalibModule

from ._runtime_worker import peak_rss_mib

__all__ = ["inference_parameters", "measure_latency", "peak_rss_mib"]

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
