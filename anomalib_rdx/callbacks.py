"""Lightning callbacks of the package."""

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from anomalib_rdx.components.served import ServedTestBatches

METRIC_MEANINGS = {
    "image_AUROC": "share of (defective, good) test-image pairs scored in the right order; 0.5 is chance, 1 perfect",
    "image_F1Score": "F1 of the anomalous/normal labels at the threshold fitted on validation",
    "pixel_AUROC": "the same ranking over pixels, defect against defect-free pixels",
    "pixel_F1Score": "F1 of the predicted masks at the threshold fitted on validation",
}


class TestSummary(ServedTestBatches):
    """Print, after testing, where the heat maps are, what the test metrics mean and what was decided.

    anomalib's own metric table stays (Lightning prints it just after this callback's lines); this adds a
    few lines for a first-time user, among them the accept/reject decisions on the test images: how many
    good parts were rejected and how many defective ones caught at the threshold fitted on validation
    (counted on the process that prints; under DDP that is rank 0's share of the test images). Each batch
    is read once the model's post-processor has labelled it (:class:`ServedTestBatches`).
    Add it in a config with ``trainer.callbacks: [{class_path: anomalib_rdx.callbacks.TestSummary}]``.
    """

    def reset(self) -> None:
        """Start counting the decisions afresh (one count per test run)."""
        self.decisions = {"good": 0, "good_rejected": 0, "defective": 0, "defective_caught": 0}

    def read(self, outputs: Any) -> None:
        """Count a served batch's labelled images and the decisions on them."""
        labels, decided = getattr(outputs, "gt_label", None), getattr(outputs, "pred_label", None)
        if labels is None or decided is None:
            return
        labels, decided = labels.flatten().bool().cpu(), decided.flatten().bool().cpu()
        self.decisions["good"] += int((~labels).sum())
        self.decisions["good_rejected"] += int((~labels & decided).sum())
        self.decisions["defective"] += int(labels.sum())
        self.decisions["defective_caught"] += int((labels & decided).sum())

    def summary(self, trainer: Trainer, pl_module: LightningModule) -> list[str]:
        """Return the lines :meth:`on_test_end` prints.

        Args:
            trainer: Trainer that ran the test.
            pl_module: Tested model.

        Returns:
            One line for the heat-map folder (when the model saves images), one per known metric and one
            for the decisions (when the test images carry labels).
        """
        lines = []
        visualizer = getattr(pl_module, "visualizer", None)
        folder = getattr(visualizer, "output_dir", None)
        if folder is not None:  # anomalib's ImageVisualizer sets it at the first test batch
            lines.append(f"Heat maps of the test images (image | anomaly map | predicted mask): {Path(folder)}")
        for name, meaning in METRIC_MEANINGS.items():
            value = trainer.callback_metrics.get(name)
            if value is not None:
                lines.append(f"{name} {float(value):.3f}: {meaning}")
        counts = self.decisions
        if counts["good"] or counts["defective"]:
            lines.append(
                "At the threshold fitted on validation: "
                f"{counts['good_rejected']} of {counts['good']} good test images rejected, "
                f"{counts['defective_caught']} of {counts['defective']} defective ones caught"
            )
        return lines

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the summary once, on the main process.

        Args:
            trainer: Trainer that ran the test.
            pl_module: Tested model.
        """
        if trainer.is_global_zero:
            for line in self.summary(trainer, pl_module):
                print(line)
