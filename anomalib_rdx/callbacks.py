"""Lightning callbacks of the package."""

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

METRIC_MEANINGS = {
    "image_AUROC": "share of (defective, good) test-image pairs scored in the right order; 0.5 is chance, 1 perfect",
    "image_F1Score": "F1 of the anomalous/normal labels at the threshold fitted on validation",
    "pixel_AUROC": "the same ranking over pixels, defect against defect-free pixels",
    "pixel_F1Score": "F1 of the predicted masks at the threshold fitted on validation",
}


class TestSummary(Callback):
    """Print, after testing, where the heat maps are and what the test metrics mean.

    anomalib's own metric table stays (Lightning prints it just after this callback's lines); this adds a
    few lines for a first-time user. Add it in a config with
    ``trainer.callbacks: [{class_path: anomalib_rdx.callbacks.TestSummary}]``.
    """

    @staticmethod
    def summary(trainer: Trainer, pl_module: LightningModule) -> list[str]:
        """Return the lines :meth:`on_test_end` prints.

        Args:
            trainer: Trainer that ran the test.
            pl_module: Tested model.

        Returns:
            One line for the heat-map folder (when the model saves images) and one per known metric.
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
