r"""Peak training and inference memory per model: ``python -m anomalib_rdx.benchmark.memory``.

Each measurement runs in a fresh process, so its peak belongs to one model alone:

- training: ``--steps`` optimiser steps of ``Engine.fit`` at ``--image-size`` with batch ``--batch-size``
  on the bundled sample (or ``--data``), validation off;
- inference: the exported ``.pt`` on one batch of ``--batch-size`` images
  (:func:`anomalib_rdx.benchmark.measure.measure_latency`).

Reported: the process's peak resident memory (``VmHWM``, MiB) and, on a GPU, torch's peak allocated
device memory. Prints one JSON line per model and writes ``<output>/memory.json``.

Example:
    python -m anomalib_rdx.benchmark.memory --models RDExpert AugmentedRD --batch-size 16
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .measure import measure_latency, peak_rss_mib

PACKAGE_MODELS = ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"]


def _train_worker(name: str, data: Path, image_size: int, batch_size: int, steps: int, export_to: Path) -> dict:
    """Train ``name`` for ``steps`` steps in this process; export its ``.pt``; report peak memory."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from .accuracy import BenchmarkConfig, _build, model_class

    config = BenchmarkConfig(root=str(data.parent), category=data.name, image_size=image_size)
    model = _build(model_class(name), config)
    datamodule = MVTecAD(
        root=data.parent, category=data.name, train_batch_size=batch_size, num_workers=0, val_split_mode="none"
    )
    engine = Engine(max_steps=steps, logger=False, default_root_dir=export_to, limit_val_batches=0, devices=1)
    engine.fit(model, datamodule=datamodule)
    artifact = engine.export(model, "torch", export_root=export_to)
    figures = {"train_peak_rss_mib": round(peak_rss_mib(), 1), "artifact": str(artifact)}
    if torch.cuda.is_available():
        figures["train_peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


def measure_model(name: str, data: Path, image_size: int, batch_size: int, steps: int) -> dict:
    """Peak training memory (one process) and peak inference memory (another) of one model."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "anomalib_rdx.benchmark.memory", "--worker", name, "--data", str(data)]
        command += ["--image-size", str(image_size), "--batch-size", str(batch_size), "--steps", str(steps)]
        command += ["--output", scratch]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            msg = f"Training-memory measurement of {name} failed:\n{result.stderr[-3000:]}"
            raise RuntimeError(msg)
        training = json.loads(result.stdout.strip().splitlines()[-1])
        inference = measure_latency(
            Path(training.pop("artifact")), "torch", batch_size, image_size, warmup=1, repeats=3
        )
    return {
        "model": name,
        "image_size": image_size,
        "batch_size": batch_size,
        **training,
        "inference_peak_rss_mib": round(inference["peak_rss_mib"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.memory",
        description="Peak training and inference memory of each model, each in a fresh process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=PACKAGE_MODELS)
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA_ROOT / "magnetic_tile", help="MVTec-layout folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("results/memory"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        figures = _train_worker(args.worker, args.data, args.image_size, args.batch_size, args.steps, args.output)
        print(json.dumps(figures))
        return
    rows = []
    for name in args.models:
        rows.append(measure_model(name, args.data, args.image_size, args.batch_size, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
