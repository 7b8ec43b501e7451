"""A checkpoint is data: a crafted file that would run code when unpickled is refused, naming the file.

Every place that reads a checkpoint is tried with the same crafted file: ``load_from_checkpoint`` of each
model, the Trainer's ``ckpt_path`` (``Engine.test``), the ``anomalib test`` and ``anomalib export``
commands, and the benchmark's loader. The file's payload would create a marker file; the marker must
never appear.
"""

import os
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_rdx import AugmentedRD, DualStudentKD, MultiResolutionKD, RDExpert
from anomalib_rdx.benchmark.accuracy import load_benchmark_checkpoint
from anomalib_rdx.components.checkpoint import UnsafeCheckpointError, load_checkpoint
from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .cli_helpers import ANOMALIB, model_args

REPO_ROOT = Path(__file__).resolve().parents[1]


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls ``exec`` on a statement that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file with a code-running payload, and the marker file its payload would create."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"x": _RunsCodeWhenUnpickled(marker)},
        },
        path,
    )
    # The file really carries code: torch lists the global it would call, without running it.
    assert "builtins.exec" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return path, marker


@pytest.mark.parametrize("model_class", [RDExpert, AugmentedRD, DualStudentKD, MultiResolutionKD])
def test_load_from_checkpoint_refuses_code(model_class: type, crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    refused = rf"{path} holds something other than weights \(unpickling it would call exec\)"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        model_class.load_from_checkpoint(path)
    assert not marker.exists()


def test_weights_only_false_is_refused(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True only"):
        RDExpert.load_from_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_benchmark_loader_refuses_code(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_benchmark_checkpoint("RDExpert", path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists()


def test_trainer_ckpt_path_refuses_code(crafted: tuple[Path, Path], lite0_teacher: dict, tmp_path: Path) -> None:
    path, marker = crafted
    model = AugmentedRD(**lite0_teacher, pre_processor=AugmentedRD.configure_pre_processor((64, 64)))
    datamodule = MVTecAD(root=SAMPLE_DATA_ROOT, category="magnetic_tile", val_split_mode="synthetic", num_workers=0)
    engine = Engine(default_root_dir=tmp_path / "out", logger=False, accelerator="cpu", devices=1)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path} holds something other than weights"):
        engine.test(model, datamodule=datamodule, ckpt_path=path)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["test", "export"])
def test_cli_refuses_code(subcommand: str, crafted: tuple[Path, Path], lite0_weights: Path, tmp_path: Path) -> None:
    import subprocess

    path, marker = crafted
    args = [ANOMALIB, subcommand, *model_args("anomalib_rdx.AugmentedRD", lite0_weights), "--ckpt_path", str(path)]
    if subcommand == "test":
        args += ["--data", "anomalib.data.MVTecAD", "--data.root", str(SAMPLE_DATA_ROOT)]
        args += ["--data.category", "magnetic_tile", "--data.val_split_mode", "synthetic"]
        args += ["--default_root_dir", str(tmp_path / "out")]
    else:
        args += ["--export_type", "torch", "--export_root", str(tmp_path / "exported")]
    environment = {**os.environ, "COLUMNS": "1000"}  # the CLI's rich output would wrap the file's path
    result = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False, env=environment
    )
    output = " ".join((result.stdout + result.stderr).split())  # the CLI's rich output wraps lines
    assert result.returncode != 0, output[-3000:]
    assert f"{path} holds something other than weights" in output, output[-3000:]
    assert not marker.exists()
