"""Metrics per defect type and learning curves, computed with anomalib's metric classes.

Pooled pixel AUROC on a dataset is dominated by its defect type with the largest masks (``uneven`` on
magnetic_tile covers about a quarter of each of its images), so the benchmark also reports every metric
per defect type: for type ``t``, the metric over the good test images and the images of ``t``. The
defect type of an image is the name of its folder (``test/<type>/<image>``, the MVTec layout).

The learning curve records the validation metrics (synthetic anomalies of held-out training images,
never test images) at each validation run against training steps and training seconds, so budgets and
recipes can be chosen without the test split.
"""

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import AUPRO, AUROC
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from anomalib_rdx.components.served import ServedTestBatches

GOOD = "good"
PER_TYPE_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def _metrics() -> dict[str, AnomalibMetric]:
    return {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"], strict=False),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], strict=False, fpr_limit=0.3),
    }


def _subset(batch: Any, indices: list[int]) -> SimpleNamespace:
    """Select the fields the metrics read, for the images at ``indices`` of ``batch``."""
    index = torch.tensor(indices)
    fields = {}
    for name in ("pred_score", "gt_label", "anomaly_map", "gt_mask"):
        value = getattr(batch, name, None)
        fields[name] = None if value is None else value[index]
    return SimpleNamespace(**fields)


class PerDefectTypeMetrics(ServedTestBatches):
    """Image AUROC, pixel AUROC and PRO (AUPRO to 30% FPR) of the test split, per defect type.

    The metrics read each batch as served, after the model's post-processor has normalised it (see
    :class:`~anomalib_rdx.components.served.ServedTestBatches`), as anomalib's Evaluator does for the pooled
    metrics. Raw outputs would not do: anomalib's AUROC passes scores outside [0, 1] through a sigmoid,
    per update, which saturates large raw scores (PatchCore's distances all became 1.0) and can treat
    batches differently.
    """

    def reset(self) -> None:
        """Start from empty metrics (one test run)."""
        self.metrics: dict[str, dict[str, AnomalibMetric]] = {}
        self.counts: dict[str, int] = {}
        self._good: list[SimpleNamespace] = []

    def read(self, outputs: Any) -> None:
        """Add the batch's images to the metrics of their defect type (good images: to every type)."""
        by_type: dict[str, list[int]] = {}
        for index, path in enumerate(outputs.image_path):
            by_type.setdefault(Path(path).parent.name, []).append(index)
        for defect_type, indices in by_type.items():
            self.counts[defect_type] = self.counts.get(defect_type, 0) + len(indices)
            part = _subset(outputs, indices)
            if defect_type == GOOD:
                self._good.append(part)
                for metrics in self.metrics.values():
                    self._update(metrics, part)
                continue
            if defect_type not in self.metrics:
                self.metrics[defect_type] = _metrics()
                for good in self._good:  # good images seen before this type's first image
                    self._update(self.metrics[defect_type], good)
            self._update(self.metrics[defect_type], part)

    @staticmethod
    def _update(metrics: dict[str, AnomalibMetric], part: SimpleNamespace) -> None:
        for metric in metrics.values():
            metric.update(part)

    def compute(self) -> dict[str, float]:
        """``{<type>_<metric>: value}`` for every defect type, the per-type means and the image counts."""
        results: dict[str, float] = {}
        for defect_type, metrics in sorted(self.metrics.items()):
            for name, metric in metrics.items():
                value = metric.compute()
                results[f"{defect_type}_{name}"] = round(float(value), 4) if value is not None else float("nan")
            results[f"{defect_type}_images"] = self.counts[defect_type]
        results[f"{GOOD}_images"] = self.counts.get(GOOD, 0)
        for name in PER_TYPE_METRICS:
            values = [results[f"{defect_type}_{name}"] for defect_type in self.metrics]
            if values:
                results[f"mean_per_type_{name}"] = round(sum(values) / len(values), 4)
        return results


class LearningCurve(Callback):
    """Validation metrics against training steps and training seconds (validation time excluded)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self._batch_start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        """Start the step's clock."""
        del args
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        """Add the step's time."""
        del args
        self.train_seconds += time.perf_counter() - self._batch_start

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the validation metrics anomalib's evaluator logged (``val_`` prefix)."""
        del pl_module
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val_")}
        if trainer.sanity_checking or not metrics:
            return
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "train_seconds": self.train_seconds}
        self.rows.append(row | {key: round(value, 4) for key, value in metrics.items()})
