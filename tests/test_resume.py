"""Same seed, same result; an interrupted run resumed from its checkpoint ends where an uninterrupted one does.

Every model trains on a small real subset of magnetic_tile (64x64, one CPU process, no loader
workers). Resuming uses Lightning's ``ckpt_path`` (what ``anomalib train --ckpt_path`` does): it restores
every optimiser and the loop counters, and the package restores the random states saved in the
checkpoint before Lightning draws the resumed epoch's shuffling seed, so the resumed run repeats the
uninterrupted one exactly: same data order, same synthetic anomalies, same weights, same metrics.
"""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback

import anomalib_rdx

from .conftest import requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

MODELS = ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"]
SIZE = (64, 64)


class RandomStateAtFirstBatch(Callback):
    """Record torch's global random state at the first training batch of every epoch.

    By then the epoch's loader iterator exists (its shuffling seed drawn), so equal states mean the
    same data order and the same synthetic anomalies from there on.
    """

    def __init__(self) -> None:
        self.states: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        if batch_idx == 0:
            self.states[trainer.current_epoch] = torch.get_rng_state()


def _train(
    name: str, root: Path, teacher: dict, output: Path, epochs: int, ckpt_path: Path | None = None
) -> tuple[dict, dict, Path, dict]:
    """Fit and test; metrics, network weights, the checkpoint and the random states at epochs' first batches."""
    seed_everything(0, workers=True)
    model_class = getattr(anomalib_rdx, name)
    model = model_class(**teacher, pre_processor=model_class.configure_pre_processor(SIZE))
    datamodule = MVTecAD(
        root=root, category="magnetic_tile", train_batch_size=8, eval_batch_size=8, num_workers=0,
        val_split_mode="synthetic", val_split_ratio=0.2, seed=0,
    )  # fmt: skip
    recorder = RandomStateAtFirstBatch()
    engine = Engine(
        max_epochs=epochs, logger=False, default_root_dir=output, enable_progress_bar=False, callbacks=[recorder]
    )
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    weights = {key: value.clone() for key, value in model.state_dict().items() if key.startswith("model.")}
    return metrics, weights, next(output.rglob("*.ckpt")), recorder.states


def _largest_difference(first: dict, second: dict) -> float:
    return max(float((first[key].float() - second[key].float()).abs().max()) for key in first)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_metrics(name: str, magnetic_tile_subset: Path, lite0_teacher: dict, tmp_path: Path) -> None:
    first_metrics, first_weights, _, _ = _train(name, magnetic_tile_subset, lite0_teacher, tmp_path / "a", epochs=1)
    second_metrics, second_weights, _, _ = _train(name, magnetic_tile_subset, lite0_teacher, tmp_path / "b", epochs=1)
    assert _largest_difference(first_weights, second_weights) == 0.0
    for metric in ("image_AUROC", "pixel_AUROC"):
        assert first_metrics[metric] == second_metrics[metric]


@pytest.mark.parametrize("name", MODELS)
def test_resumed_run_matches_uninterrupted(
    name: str, magnetic_tile_subset: Path, lite0_teacher: dict, tmp_path: Path
) -> None:
    full_metrics, full_weights, full_checkpoint, full_states = _train(
        name, magnetic_tile_subset, lite0_teacher, tmp_path / "full", epochs=2
    )
    _, _, interrupted, _ = _train(name, magnetic_tile_subset, lite0_teacher, tmp_path / "cut", epochs=1)
    resumed_metrics, resumed_weights, resumed_checkpoint, resumed_states = _train(
        name, magnetic_tile_subset, lite0_teacher, tmp_path / "resumed", epochs=2, ckpt_path=interrupted
    )
    # The second epoch's first batch sees the uninterrupted run's random state (data order, anomalies).
    assert list(resumed_states) == [1]
    assert torch.equal(resumed_states[1], full_states[1])
    # Every optimiser continued: same number of optimiser steps as the uninterrupted run.
    full, resumed = (
        torch.load(path, map_location="cpu", weights_only=True) for path in (full_checkpoint, resumed_checkpoint)
    )
    assert resumed["global_step"] == full["global_step"]
    assert len(resumed["optimizer_states"]) == len(full["optimizer_states"]) == (2 if name == "RDExpert" else 1)
    for full_optimizer, resumed_optimizer in zip(full["optimizer_states"], resumed["optimizer_states"], strict=True):
        full_steps = {float(state["step"]) for state in full_optimizer["state"].values()}
        resumed_steps = {float(state["step"]) for state in resumed_optimizer["state"].values()}
        assert resumed_steps == full_steps
    # ... and ends exactly where the uninterrupted run does.
    assert _largest_difference(full_weights, resumed_weights) == 0.0
    for metric in ("image_AUROC", "pixel_AUROC"):
        assert resumed_metrics[metric] == full_metrics[metric]
