"""Time one exported model in a fresh process and report its peak memory (run as a script).

Run by :mod:`anomalib_rdx.benchmark.deployment`, one process per (artifact, batch size), so that the
peak resident memory it reports belongs to that runtime alone: an OpenVINO process imports neither
torch nor anomalib. Prints one JSON line: median and spread of the batch latency over ``repeats``
runs after ``warmup`` runs, and the process's peak resident set size.

Usage: ``python _runtime_worker.py <torch|openvino> <artifact> <batch> <size> <warmup> <repeats> [class path]``

The PyTorch runtime reads a Lightning checkpoint (``artifact``) of the model class at ``class path`` with
that class's ``load_from_checkpoint`` (data only, ``weights_only=True``) and runs its whole inference
pipeline (pre-processor, network, post-processor): what anomalib's torch export holds, without unpickling
a module, which would run code.
"""

import importlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process (``VmHWM``; ``ru_maxrss`` would include the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on most systems


def _torch_runner(artifact: str, batch: int, size: int, class_path: str):  # noqa: ANN202
    import torch

    module, _, name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    # Benchmark checkpoints also hold the benchmark's evaluator metrics: load the networks leniently.
    model = model_class.load_from_checkpoint(artifact, map_location="cpu", strict=False).eval()
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def run() -> None:
        with torch.inference_mode():
            model(images)

    return run


def _openvino_runner(artifact: str, batch: int, size: int, class_path: str):  # noqa: ANN202
    del class_path
    import numpy as np
    import openvino as ov

    # FP32 IRs run in FP32 (the CPU plugin would otherwise pick bfloat16 on AMX CPUs); an INT8 IR keeps
    # its quantised layers in INT8 either way.
    compiled = ov.Core().compile_model(artifact, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)

    def run() -> None:
        request.infer({0: images})

    return run


def main(argv: list[str]) -> None:
    """Measure and print one JSON line."""
    runtime, artifact, batch, size, warmup, repeats, *class_path = argv
    batch, size, warmup, repeats = int(batch), int(size), int(warmup), int(repeats)
    baseline_mib = peak_rss_mib()
    run = (_torch_runner if runtime == "torch" else _openvino_runner)(artifact, batch, size, "".join(class_path))
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(
        json.dumps(
            {
                "latency_ms": 1000 * median,
                "latency_ms_min": 1000 * min(seconds),
                "latency_ms_max": 1000 * max(seconds),
                "images_per_second": batch / median,
                "peak_rss_mib": peak_rss_mib(),
                "startup_rss_mib": baseline_mib,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
