"""A Lightning callback for the DDP test: every rank's weights after training, gathered on rank 0."""

import json
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback


class WeightChecksums(Callback):
    """Write each rank's per-optimiser weight checksums to ``path`` (JSON, rank 0) when training ends.

    Ranks that train on different batches end with equal weights only if every optimiser's gradients
    were synchronised.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizers = trainer.optimizers
        local = torch.tensor(
            [
                float(sum(p.detach().double().sum() for group in o.param_groups for p in group["params"]))
                for o in optimizers
            ],
            dtype=torch.float64,
        )
        gathered = trainer.strategy.all_gather(local)
        if trainer.global_rank == 0:
            self.path.write_text(json.dumps({"world_size": trainer.world_size, "checksums": gathered.tolist()}))
