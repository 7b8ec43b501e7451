"""AUROC of anomaly scores on any scale.

torchmetrics reads a batch of predictions with any value outside ``[0, 1]`` as logits and passes that
whole batch through a sigmoid before it is stored, and anomalib's ``AUROC`` inherits this. Raw anomaly
scores are not probabilities: a distance, a discrepancy or a map summed over layers is often above 1.
Then (a) large scores all become ``1.0`` in float32 (above about 17) and tie, so the AUROC falls to
0.5, and (b) when some batches stay inside ``[0, 1]`` and others do not, the batches are stored on two
different scales and the order between them is lost. Both happen on the *validation* split, where the
package's post-processor sees the network's raw outputs (it calibrates on them); test outputs are
normalised to ``(0, 1)`` first and are not affected.

:class:`ScoreAUROC` is anomalib's ``AUROC`` that stores the scores as they are. The ROC only depends on
their order, so the figure is the same as anomalib's wherever anomalib's is right.
"""

from typing import Any

import torch
from anomalib.metrics import AnomalibMetric
from anomalib.metrics.auroc import _AUROC


class _ScoreAUROC(_AUROC):
    """``_AUROC`` that keeps predictions on their own scale (no sigmoid of out-of-range batches)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Store ``preds`` and ``target`` as they are (flattened)."""
        if self.thresholds is not None:
            msg = "ScoreAUROC keeps every score; binned thresholds are not supported."
            raise ValueError(msg)
        self.preds.append(preds.detach().flatten().float())
        self.target.append(target.detach().flatten().long())


class ScoreAUROC(AnomalibMetric, _ScoreAUROC):  # type: ignore[misc]
    """Anomalib's AUROC metric for raw anomaly scores and maps of any scale (see the module docstring).

    It is logged under anomalib's name (``<prefix>AUROC``), so results and learning curves keep their
    columns.

    Example:
        >>> from types import SimpleNamespace
        >>> metric = ScoreAUROC(fields=["pred_score", "gt_label"])
        >>> metric.update(SimpleNamespace(pred_score=torch.tensor([50.0, 70.0]), gt_label=torch.tensor([0, 1])))
        >>> metric.update(SimpleNamespace(pred_score=torch.tensor([0.5, 60.0]), gt_label=torch.tensor([0, 1])))
        >>> float(metric.compute())
        1.0
    """

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, prefix=prefix, **kwargs)
        self.name = prefix + "AUROC"
