"""Read test batches as the model serves them: after anomalib's post-processor has normalised them.

Shared by the benchmark's recorders and by :class:`~anomalib_rdx.callbacks.TestSummary`.
"""

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

__all__ = ["ServedTestBatches"]


class ServedTestBatches(Callback):
    """Base of the test recorders: hands each test batch to :meth:`read` once it is served.

    Lightning runs a trainer's callbacks before the model's own (anomalib's post-processor is one), so at
    ``on_test_batch_end`` a batch is neither normalised nor thresholded yet. The batch is kept and read
    when the next batch ends or the test epoch ends, after the post-processor has updated it in place.
    Subclasses implement :meth:`reset` (each test run starts empty) and :meth:`read`; :meth:`arrived`
    sees a batch as the network produced it.
    """

    def __init__(self) -> None:
        self._pending: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget what earlier test runs recorded."""

    def arrived(self, outputs: Any) -> None:
        """See a batch before the post-processor (raw scores and maps)."""

    def read(self, outputs: Any) -> None:
        """Record a served batch (normalised scores and maps, labels and masks)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Read the kept batch, if any."""
        outputs, self._pending = self._pending, None
        if outputs is not None:
            self.read(outputs)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start empty: each test run is recorded on its own."""
        del trainer, pl_module
        self._pending = None
        self.reset()

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Read the previous batch (served by now) and keep this one."""
        del trainer, pl_module, args
        self.flush()
        self.arrived(outputs)
        self._pending = outputs

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Read the last batch."""
        del trainer, pl_module
        self.flush()
