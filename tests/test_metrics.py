"""ScoreAUROC: anomalib's AUROC for raw anomaly scores, which torchmetrics would read as logits per batch."""

from types import SimpleNamespace

import torch
from anomalib.metrics import AUROC

from anomalib_rdx.components import ScoreAUROC


def _fill(metric: AUROC, batches: list[tuple[list[float], list[int]]]) -> float:
    for scores, labels in batches:
        metric.update(SimpleNamespace(pred_score=torch.tensor(scores), gt_label=torch.tensor(labels)))
    return float(metric.compute())


def test_large_raw_scores_keep_their_order() -> None:
    batches = [([50.0, 60.0], [0, 0]), ([70.0, 80.0], [1, 1])]  # a discrepancy around 50: sigmoid gives 1.0
    assert _fill(AUROC(fields=["pred_score", "gt_label"]), batches) == 0.5  # what anomalib's metric reports
    assert _fill(ScoreAUROC(fields=["pred_score", "gt_label"]), batches) == 1.0


def test_batches_on_both_sides_of_one_are_compared_on_one_scale() -> None:
    # Good parts 1.2 and 0.8, defective 1.5 and 0.9: 0.9 < 1.2, so the AUROC is 3/4. The first batch leaves
    # [0, 1] and is squashed by a sigmoid (1.2 -> 0.77), the second is not: anomalib's metric reports 1.0.
    batches = [([1.2, 1.5], [0, 1]), ([0.8, 0.9], [0, 1])]
    assert _fill(ScoreAUROC(fields=["pred_score", "gt_label"]), batches) == 0.75
    assert _fill(AUROC(fields=["pred_score", "gt_label"]), batches) == 1.0


def test_same_as_anomalib_inside_zero_one() -> None:
    generator = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(200, generator=generator), torch.randint(0, 2, (200,), generator=generator)
    batches = [(scores[i : i + 16].tolist(), labels[i : i + 16].tolist()) for i in range(0, 200, 16)]
    ours = _fill(ScoreAUROC(fields=["pred_score", "gt_label"]), batches)
    assert abs(ours - _fill(AUROC(fields=["pred_score", "gt_label"]), batches)) < 1e-6


def test_maps_with_missing_masks_are_skipped_when_not_strict() -> None:
    metric = ScoreAUROC(fields=["anomaly_map", "gt_mask"], strict=False)
    maps = torch.arange(8.0).reshape(1, 1, 2, 4) * 10  # up to 70
    metric.update(SimpleNamespace(anomaly_map=maps, gt_mask=(maps > 35).int().squeeze(1)))
    metric.update(SimpleNamespace(anomaly_map=maps, gt_mask=None))
    assert float(metric.compute()) == 1.0


def test_logged_under_anomalibs_name() -> None:
    assert ScoreAUROC(fields=["pred_score", "gt_label"], prefix="val_image_").name == "val_image_AUROC"
