"""Learning-rate schedules over the training budget, counted in steps or in wall-clock time.

The papers of this package train at constant learning rates. Under a fixed budget a decaying rate is
the usual alternative (Li et al., "Budgeted Training", ICLR 2020): the rate follows the share of the
budget already used, so the same schedule serves ``max_steps``, ``max_epochs`` and a wall-clock
``max_time`` (Lightning's :class:`~lightning.pytorch.callbacks.Timer`). Whichever budget runs out first
ends training, so the largest share counts. A schedule over wall-clock time depends on the machine's
speed: a resumed run follows the same rates only approximately.
"""

import math
from collections.abc import Sequence
from typing import Literal

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Timer
from torch import optim

LRSchedule = Literal["constant", "cosine"]


def check_lr_schedule(schedule: str) -> LRSchedule:
    """Refuse an unknown schedule name, naming the argument."""
    if schedule not in {"constant", "cosine"}:
        msg = f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}."
        raise ValueError(msg)
    return schedule  # type: ignore[return-value]


def budget_progress(trainer: Trainer, optimizer_steps_per_batch: int = 1) -> float:
    """Share of the training budget used so far, in ``[0, 1]``.

    Args:
        trainer: The running trainer.
        optimizer_steps_per_batch: Optimiser steps per training batch (Lightning's ``global_step``
            counts each of them; two for a model with two optimisers under manual optimisation).

    Raises:
        ValueError: The trainer has no finite budget (no ``max_steps``, ``max_time`` or ``max_epochs``).
    """
    shares = []
    if trainer.max_steps > 0:
        shares.append(trainer.global_step / trainer.max_steps)
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None:
        elapsed = timer.time_elapsed()
        shares.append(elapsed / max(elapsed + remaining, 1e-9))
    batches = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(batches) and batches > 0:
        shares.append(trainer.global_step / (trainer.max_epochs * batches * optimizer_steps_per_batch))
    if not shares:
        msg = "lr_schedule='cosine' needs a finite training budget: set max_steps, max_time or max_epochs."
        raise ValueError(msg)
    return min(max(shares), 1.0)


def schedule_factor(schedule: LRSchedule, progress: float) -> float:
    """Multiplier of the base learning rate: 1 (``"constant"``) or half a cosine from 1 to 0."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rates(optimizers: Sequence[optim.Optimizer], base_rates: Sequence[float], factor: float) -> None:
    """Set every parameter group of each optimiser to its base rate times ``factor``."""
    for optimizer, base_rate in zip(optimizers, base_rates, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = base_rate * factor
