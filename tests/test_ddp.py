"""Every model trains with Lightning's DDP strategy in two CPU processes (gloo) through the real CLI.

Both ranks must end with the same weights for every optimiser (each rank trains on other batches, so
only synchronised gradients keep them equal: RDExpert's two manually stepped optimisers included), and
the checkpoint must load in one process and score as the DDP run scored it.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

import anomalib_rdx

from .cli_helpers import data_args, only_checkpoint, run_anomalib
from .conftest import REPO_ROOT, requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]


@pytest.mark.parametrize("name", ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"])
def test_ddp_two_processes(name: str, magnetic_tile_subset: Path, lite0_weights: Path, tmp_path: Path) -> None:
    checksums = tmp_path / "checksums.json"
    output = run_anomalib(
        "train",
        "--model", f"anomalib_rdx.{name}",
        "--model.backbone", "efficientnet_lite0",
        "--model.layers", "[1, 2, 3]",
        "--model.backbone_weights", str(lite0_weights),
        *data_args(magnetic_tile_subset),
        "--data.train_batch_size", "4",
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        "--trainer.callbacks+=tests.ddp_probe.WeightChecksums",
        f"--trainer.callbacks.path={checksums}",
        "--default_root_dir", str(tmp_path / "ddp"),
        "--seed_everything", "0",
        cwd=REPO_ROOT,
        importable=REPO_ROOT,
    )  # fmt: skip
    report = json.loads(checksums.read_text())
    assert report["world_size"] == 2
    first_rank, second_rank = report["checksums"]
    assert len(first_rank) == (2 if name == "RDExpert" else 1)
    assert first_rank == pytest.approx(second_rank, rel=1e-9, abs=1e-9)
    ddp_auroc = float(re.search(r"image_AUROC\s*│\s*([0-9.]+)", output).group(1))
    # The checkpoint loads in one process and scores the test split as the DDP run did.
    model = getattr(anomalib_rdx, name).load_from_checkpoint(only_checkpoint(tmp_path / "ddp"))
    datamodule = MVTecAD(
        root=magnetic_tile_subset, category="magnetic_tile", num_workers=0, val_split_mode="synthetic",
        val_split_ratio=0.2, seed=0,
    )  # fmt: skip
    engine = Engine(logger=False, default_root_dir=tmp_path / "single", enable_progress_bar=False, devices=1)
    (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    assert metrics["image_AUROC"] == pytest.approx(ddp_auroc, abs=1e-4)
    assert torch.isfinite(torch.tensor(metrics["pixel_AUROC"]))
