"""Decision metrics: what the shipped accept/reject labels and defect masks are worth on the test split.

AUROC says how well a model ranks parts; a production line acts on ``pred_label`` and ``pred_mask``. For
the labels a model ships with (its post-processor's threshold) this module reports

- image level: F1 (defective = positive), the false-reject rate (good parts flagged), the miss rate
  (defective parts passed), the F1 of the trivial rule "everything is defective", and the F1 at the best
  threshold on the test split itself (an *oracle*, for reference only: it sees the test labels and must
  never be used to choose anything);
- pixel level: F1 and IoU of the predicted masks pooled over all test pixels, and the oracle pixel F1
  (best single threshold on the test maps, searched over a fixed grid of normalised map values).

:class:`DecisionRecorder` collects what is needed during ``Engine.test`` (per image: path, label, score,
predicted label; per pixel: counts at the shipped mask and two histograms), :func:`image_decisions` and
:func:`pixel_decisions` turn them into figures.
"""

import argparse
import copy
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from anomalib_rdx.components.post_processing import NormalQuantilePostProcessor
from anomalib_rdx.components.served import ServedTestBatches


def pixel_threshold_grid() -> torch.Tensor:
    """Candidate thresholds for the pixel oracle on normalised maps in ``[0, 1]``.

    Even steps of 0.001, plus 400 levels approaching 1 geometrically (down to ``1 - 1e-7``): quantile
    and min-max normalised maps put nearly every defect pixel just below 1.
    """
    even = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    near_one = 1.0 - torch.logspace(-3, -7, 400, dtype=torch.float64)
    return torch.unique(torch.cat([even, near_one]))


def _f1(true_positives: float, false_positives: float, false_negatives: float) -> float:
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else 0.0


def image_decisions(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Image-level decision figures from per-image records.

    Args:
        records: One mapping per test image with ``gt_label`` (1: defective), ``pred_score`` and
            ``pred_label`` (the shipped decision; 1/``True``: rejected).

    Returns:
        ``image_F1_shipped``, ``false_reject_rate``, ``miss_rate``, ``image_F1_all_defective``,
        ``image_F1_oracle`` (best threshold on these very scores; reference only) and the counts
        ``good_images``/``defective_images``.

    Raises:
        ValueError: When a record lacks one of the fields, or no image is good or none defective.
    """
    rows = list(records)
    for index, row in enumerate(rows):
        missing = [key for key in ("gt_label", "pred_score", "pred_label") if row.get(key) in (None, "")]
        if missing:
            msg = f"record {index} ({row.get('image_path', 'no image_path')}) lacks {missing}."
            raise ValueError(msg)
    labels = [int(float(row["gt_label"])) for row in rows]
    decisions = [_as_flag(row["pred_label"]) for row in rows]
    scores = [float(row["pred_score"]) for row in rows]
    good = labels.count(0)
    defective = labels.count(1)
    if not good or not defective:
        msg = f"records need good and defective images, got {good} good and {defective} defective."
        raise ValueError(msg)
    true_positives = sum(1 for label, flag in zip(labels, decisions, strict=True) if label and flag)
    false_positives = sum(1 for label, flag in zip(labels, decisions, strict=True) if not label and flag)
    false_negatives = defective - true_positives
    return {
        "image_F1_shipped": _f1(true_positives, false_positives, false_negatives),
        "false_reject_rate": false_positives / good,
        "miss_rate": false_negatives / defective,
        "image_F1_all_defective": _f1(defective, good, 0),
        "image_F1_oracle": _oracle_image_f1(scores, labels),
        "good_images": good,
        "defective_images": defective,
    }


def _as_flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "1.0", "true"}
    return bool(value)


def _oracle_image_f1(scores: list[float], labels: list[int]) -> float:
    """Best F1 over every threshold "reject when score >= s" (s a test score; all defective included)."""
    order = sorted(zip(scores, labels, strict=True), key=lambda pair: -pair[0])
    defective = sum(labels)
    best = true_positives = false_positives = 0
    for index, (score, label) in enumerate(order):
        true_positives += label
        false_positives += 1 - label
        # Only cut between distinct scores: tied images get the same decision.
        if index + 1 < len(order) and order[index + 1][0] == score:
            continue
        best = max(best, _f1(true_positives, false_positives, defective - true_positives))
    return best


@dataclass
class PixelCounts:
    """Pooled pixel counts of a test run: at the shipped masks, and per candidate threshold."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    thresholds: torch.Tensor = field(default_factory=pixel_threshold_grid)
    defect_above: torch.Tensor | None = None
    """Per threshold: defect pixels whose map value is above it."""
    normal_above: torch.Tensor | None = None
    """Per threshold: defect-free pixels whose map value is above it."""
    defect_pixels: int = 0

    def update(self, anomaly_map: torch.Tensor, gt_mask: torch.Tensor, pred_mask: torch.Tensor | None) -> None:
        """Add one batch: normalised maps, ground-truth masks and the shipped masks (same pixel count)."""
        values = anomaly_map.detach().flatten().double().cpu()
        truth = gt_mask.detach().flatten().bool().cpu()
        if values.numel() != truth.numel():
            msg = f"anomaly_map has {values.numel()} pixels but gt_mask {truth.numel()}."
            raise ValueError(msg)
        if pred_mask is not None:
            flagged = pred_mask.detach().flatten().bool().cpu()
            self.true_positives += int((flagged & truth).sum())
            self.false_positives += int((flagged & ~truth).sum())
            self.false_negatives += int((~flagged & truth).sum())
        defect_above = _count_above(values[truth], self.thresholds)
        normal_above = _count_above(values[~truth], self.thresholds)
        self.defect_above = defect_above if self.defect_above is None else self.defect_above + defect_above
        self.normal_above = normal_above if self.normal_above is None else self.normal_above + normal_above
        self.defect_pixels += int(truth.sum())


def _count_above(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per threshold, how many ``values`` are strictly above it."""
    return values.numel() - torch.searchsorted(values.sort().values, thresholds, right=True)


def pixel_decisions(counts: PixelCounts) -> dict[str, float]:
    """Pixel-level figures: F1 and IoU of the shipped masks, oracle F1 over the threshold grid (reference only).

    Raises:
        ValueError: When no pixel was counted or no pixel is defective.
    """
    if counts.defect_above is None or counts.normal_above is None or not counts.defect_pixels:
        msg = "pixel counts hold no defect pixel: the test split needs ground-truth masks of defects."
        raise ValueError(msg)
    true_positives, false_positives, false_negatives = (
        counts.true_positives,
        counts.false_positives,
        counts.false_negatives,
    )
    union = true_positives + false_positives + false_negatives
    oracle = 2 * counts.defect_above / (counts.defect_above + counts.normal_above + counts.defect_pixels)
    return {
        "pixel_F1_shipped": _f1(true_positives, false_positives, false_negatives),
        "pixel_IoU_shipped": true_positives / union if union else 0.0,
        "pixel_F1_oracle": float(oracle.max()),
    }


class DecisionRecorder(ServedTestBatches):
    """Record, during ``Engine.test``, what :func:`image_decisions` and :func:`pixel_decisions` read.

    Labels, scores and masks are read as served (after anomalib's post-processor, see
    :class:`~anomalib_rdx.components.served.ServedTestBatches`).
    """

    def reset(self) -> None:
        """Start empty (one recorder per test run)."""
        self.rows: list[dict] = []
        self.pixels = PixelCounts()

    def read(self, outputs: Any) -> None:
        """Record the served labels and scores, and the pixel counts of the served masks."""
        flags = outputs.pred_label if outputs.pred_label is not None else [None] * len(outputs.gt_label)
        for path, label, score, flag in zip(
            outputs.image_path, outputs.gt_label, outputs.pred_score, flags, strict=True
        ):
            self.rows.append(
                {
                    "image_path": str(path),
                    "gt_label": int(label),
                    "pred_score": float(score),
                    "pred_label": None if flag is None else int(bool(flag)),
                }
            )
        if outputs.anomaly_map is not None and outputs.gt_mask is not None:
            self.pixels.update(outputs.anomaly_map, outputs.gt_mask, outputs.pred_mask)

    def metrics(self) -> dict[str, float]:
        """Image and pixel decision figures of the recorded test run (pixel ones when masks were seen)."""
        self.flush()
        figures = image_decisions(self.rows)
        if self.pixels.defect_pixels:
            figures |= pixel_decisions(self.pixels)
        return figures


class RawOutputRecorder(Callback):
    """Keep the raw (not post-processed) outputs of validation and test batches, on the CPU."""

    FIELDS = ("image_path", "gt_label", "gt_mask", "pred_score", "anomaly_map")

    def __init__(self) -> None:
        self.validation: list[SimpleNamespace] = []
        self.test: list[SimpleNamespace] = []

    @classmethod
    def _keep(cls, outputs: Any) -> SimpleNamespace:
        kept = {name: getattr(outputs, name, None) for name in cls.FIELDS}
        kept = {name: value.detach().cpu() if torch.is_tensor(value) else value for name, value in kept.items()}
        return SimpleNamespace(**kept, pred_label=None, pred_mask=None)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep a validation batch."""
        del trainer, pl_module, args
        self.validation.append(self._keep(outputs))

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep a test batch."""
        del trainer, pl_module, args
        self.test.append(self._keep(outputs))


def decide_with(
    post_processor: PostProcessor,
    validation: list[SimpleNamespace],
    test: list[SimpleNamespace],
) -> dict[str, float]:
    """Calibrate ``post_processor`` on recorded raw validation batches, apply it to test batches, score it."""
    post_processor.on_validation_epoch_start(None, None)
    for batch in validation:
        post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)
    rows: list[dict] = []
    pixels = PixelCounts()
    for raw in test:
        batch = copy.copy(raw)
        post_processor.post_process_batch(batch)
        for path, label, score, flag in zip(
            batch.image_path, batch.gt_label, batch.pred_score, batch.pred_label, strict=True
        ):
            rows.append(
                {"image_path": path, "gt_label": int(label), "pred_score": float(score), "pred_label": int(flag)}
            )
        if batch.gt_mask is not None:
            pixels.update(batch.anomaly_map, batch.gt_mask, batch.pred_mask)
    figures = image_decisions(rows)
    raw_scores = torch.cat([batch.pred_score.flatten() for batch in test])
    labels = torch.tensor([row["gt_label"] for row in rows])
    figures["image_AUROC_raw"] = rank_auroc(raw_scores, labels)
    figures["image_AUROC_calibrated"] = rank_auroc(torch.tensor([row["pred_score"] for row in rows]), labels)
    if pixels.defect_pixels:
        figures |= pixel_decisions(pixels)
    return figures


def rank_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half) of ``scores`` for ``labels == 1``."""
    scores = scores.double().flatten()
    positives, negatives = scores[labels == 1], scores[labels == 0]
    greater = (positives[:, None] > negatives[None, :]).double().sum()
    ties = (positives[:, None] == negatives[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (positives.numel() * negatives.numel()))


def compare_threshold_rules(
    name: str, config: Any, rates: list[float], output: Path, checkpoint: Path | None = None
) -> list[dict]:
    """Train ``name`` once under the benchmark protocol, then score each threshold rule on the test split.

    Rules: the false-reject-rate rule at each of ``rates``, the F1-adaptive rule on the synthetic
    validation anomalies (with normal-quantile scores) and anomalib's default post-processor, all
    calibrated on the validation split only; the all-defective rule and the
    test-split oracle come with every row for reference. With ``checkpoint`` (a benchmark run's, same
    seed and validation ratio, so its validation images were held out of its training) nothing is
    trained.
    """
    from anomalib.engine import Engine

    from .accuracy import MODELS, benchmark_datamodule, load_benchmark_checkpoint, validation_split

    datamodule = benchmark_datamodule(config)
    if checkpoint is None:
        model = MODELS[name](config)
    else:
        model = load_benchmark_checkpoint(name, checkpoint, config.image_size)
    model.post_processor = None  # record raw outputs; each rule is applied afterwards
    model.evaluator = None
    recorder = RawOutputRecorder()
    engine = Engine(
        callbacks=[*validation_split(config.val_blend, config.seed), recorder],
        **config.training_budget(),
        default_root_dir=output / name,
        logger=False,
        enable_progress_bar=False,
        accelerator="auto",
        devices=1,
    )
    start = time.perf_counter()
    if checkpoint is None:
        engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start if checkpoint is None else 0.0
    recorder.validation = []  # the last epoch's validation only
    engine.validate(model=model, datamodule=datamodule, verbose=False)
    engine.test(model=model, datamodule=datamodule, verbose=False)
    rules: list[tuple[str, PostProcessor]] = [
        (f"false_reject_rate={rate}", NormalQuantilePostProcessor(false_reject_rate=rate)) for rate in rates
    ]
    rules.append(("f1_adaptive", NormalQuantilePostProcessor(threshold="f1_adaptive")))
    rules.append(("anomalib_default", PostProcessor()))  # F1-adaptive threshold, min-max normalisation
    rows = []
    for rule, post_processor in rules:
        figures = decide_with(post_processor, recorder.validation, recorder.test)
        rows.append({"model": name, "rule": rule, **figures, "train_seconds": round(train_seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m anomalib_rdx.benchmark.decisions``: threshold rules of one model on one dataset."""
    from .accuracy import MODELS, BenchmarkConfig, add_val_blend_argument, parsed_val_blend

    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(description=compare_threshold_rules.__doc__.split("\n")[0])
    parser.add_argument("--model", default="AugmentedRD", choices=list(MODELS))
    parser.add_argument("--root", default=defaults.root)
    parser.add_argument("--category", default=defaults.category)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    parser.add_argument(
        "--trained-checkpoint", type=Path, default=None, help="a benchmark run's checkpoint of --model: no training"
    )
    add_val_blend_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("results/threshold_rules"))
    args = parser.parse_args(argv)
    config = BenchmarkConfig(
        root=args.root,
        category=args.category,
        image_size=args.image_size,
        epochs=args.epochs,
        num_workers=args.num_workers,
        seed=args.seed,
        val_blend=parsed_val_blend(parser, args),
    )
    if args.trained_checkpoint is not None and not args.trained_checkpoint.is_file():
        parser.error(f"--trained-checkpoint {args.trained_checkpoint} is not a file")
    rows = compare_threshold_rules(args.model, config, args.rates, args.output, args.trained_checkpoint)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.model}.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(
            " ".join(
                f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in row.items()
            )
        )


if __name__ == "__main__":
    main()
