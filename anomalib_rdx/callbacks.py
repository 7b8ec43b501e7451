"""Lightning callbacks of the package."""

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

METRIC_MEANINGS = {
    "image_AUROC": "share of (defective, good) test-image pairs scored in the right order; 0.5 is chance, 1 perfect",
    "image_F1Score": "F1 of the anomalous/normal labels at the threshold fitted on validation",
    "pixel_AUROC": "the same ranking over pixels, defect against defect-free pixels",
    "pixel_F1Score": "F1 of the predicted masks at the threshold fitted on validation",
}


class TestSummary(Callback):
    """Print, after testing, where the heat maps are, what the test metrics mean and what was decided.

    anomalib's own metric table stays (Lightning prints it just after this callback's lines); this adds a
    few lines for a first-time user, among them the accept/reject decisions on the test images: how many
    good parts were rejected and how many defective ones caught at the threshold fitted on validation
    (counted on the process that prints; under DDP that is rank 0's share of the test images).
    Add it in a config with ``trainer.callbacks: [{class_path: anomalib_rdx.callbacks.TestSummary}]``.
    """

    def __init__(self) -> None:
        self.decisions = {"good": 0, "good_rejected": 0, "defective": 0, "defective_caught": 0}
        self._pending: Any = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start counting the decisions afresh."""
        del trainer, pl_module
        self.decisions = dict.fromkeys(self.decisions, 0)
        self._pending = None

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Count the previous batch, and keep this one until the model's post-processor has labelled it.

        The model's own callbacks (anomalib's post-processor among them) run after the trainer's, so the
        labels of a batch are set only after this hook has seen it.
        """
        del trainer, pl_module, args
        self._count(self._pending)
        self._pending = outputs

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the last batch."""
        del trainer, pl_module
        self._count(self._pending)
        self._pending = None

    def _count(self, outputs: Any) -> None:
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
