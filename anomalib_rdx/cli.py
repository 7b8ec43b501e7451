"""anomalib's command line with its ``seed_everything`` option applied (``anomalib-rdx``).

anomalib 2.7's ``AnomalibCLI`` accepts ``--seed_everything`` (and ``seed_everything:`` in a config) but never
calls Lightning's ``seed_everything``: a config that sets ``seed_everything: 0`` trains from a different
random initialisation, data order and synthetic anomalies on every run, and nothing says so. ``anomalib-rdx``
is anomalib's CLI, same subcommands and arguments, that seeds every random generator (data loader workers
included) before the model and the datamodule are built, as Lightning's own ``LightningCLI`` does. With an
integer seed two runs on the same machine train the same model; ``true`` (anomalib's default) draws a seed
and prints it so a run can be repeated.

    anomalib-rdx train --config configs/rd_expert.yaml
"""

from anomalib.cli import AnomalibCLI
from anomalib.loggers import configure_logger
from lightning.pytorch import seed_everything

__all__ = ["SeededAnomalibCLI", "main"]


class SeededAnomalibCLI(AnomalibCLI):
    """anomalib's CLI that applies ``seed_everything`` before any class is instantiated."""

    def before_instantiate_classes(self) -> None:
        """Seed Lightning from the parsed ``seed_everything``, then let anomalib update the config."""
        seed = self._get(self.config, "seed_everything", default=False)
        if seed is not False:
            # bool is a subclass of int: True means "draw one", which seed_everything(None) does and prints.
            seed_everything(None if seed is True else int(seed), workers=True)
        super().before_instantiate_classes()


def main() -> None:
    """Entry point of ``anomalib-rdx``: anomalib's CLI with the seed applied."""
    configure_logger()
    SeededAnomalibCLI()
