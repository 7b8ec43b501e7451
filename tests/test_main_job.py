"""The README's main job: ``anomalib-rdx train --config configs/rd_expert.yaml`` on the bundled sample.

The sample's test split holds ``N_GOOD`` good and ``N_DEFECTIVE`` defective images. Scores unrelated to the
labels give an image AUROC of 0.5 with a standard deviation of ``null_auroc_sigma`` (Mann-Whitney); the
configured model, trained on a shortened budget (``SHORT_EPOCHS`` of the config's epochs), must rank the
defective images above the good ones at least ``Z_MARGIN`` of those deviations above chance.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from anomalib_rdx.cli import SeededAnomalibCLI
from anomalib_rdx.data import SAMPLE_DATA_ROOT

from .conftest import REPO_ROOT, null_auroc_sigma

CONFIG = REPO_ROOT / "configs" / "rd_expert.yaml"
SAMPLE_TEST = SAMPLE_DATA_ROOT / "magnetic_tile" / "test"
N_GOOD = len(list((SAMPLE_TEST / "good").glob("*.png")))
N_DEFECTIVE = len([path for path in SAMPLE_TEST.glob("*/*.png") if path.parent.name != "good"])
Z_MARGIN = 2.326  # one-sided 1% level
SHORT_EPOCHS = 5


def initial_weights(seed: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """The RDExpert weights the seeded CLI builds from the main job's config, before any training."""
    monkeypatch.chdir(REPO_ROOT)
    cli = SeededAnomalibCLI(["fit", "--config", str(CONFIG), "--seed_everything", seed], run=False)
    # the networks only: the post-processor's thresholds are unset (NaN) until validation
    return {name: value.clone() for name, value in cli.model.state_dict().items() if name.startswith("model.")}


def test_the_config_seed_fixes_the_initial_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """anomalib 2.7's CLI ignores ``seed_everything``; ``anomalib-rdx`` applies it before building the model."""
    first, again, other = (initial_weights(seed, monkeypatch) for seed in ("0", "0", "1"))
    assert all(torch.equal(first[name], again[name]) for name in first)
    differing = [name for name in first if not torch.equal(first[name], other[name])]
    assert any(".student" in name or "decoder" in name or "bottleneck" in name for name in differing), differing


def test_sample_is_small_and_spread_over_every_defect_type() -> None:
    """At most 15 MB; every defect type of the dataset is in the test split."""
    size = sum(path.stat().st_size for path in SAMPLE_DATA_ROOT.rglob("*") if path.is_file())
    assert size <= 15 * 2**20
    assert {path.name for path in SAMPLE_TEST.iterdir()} == {"good", "blowhole", "break", "crack", "fray", "uneven"}


@pytest.mark.slow
def test_main_job_detects_the_bundled_defects(tmp_path: Path) -> None:
    """The configured model on a shortened budget ranks the bundled defective images above the good ones."""
    config_epochs = yaml.safe_load(CONFIG.read_text())["trainer"]["max_epochs"]
    assert config_epochs > SHORT_EPOCHS
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("anomalib-rdx")), "train", "--config", str(CONFIG),
            "--trainer.max_epochs", str(SHORT_EPOCHS),
            "--default_root_dir", str(tmp_path),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # TestSummary's line, printed for the user at the end of the job
    found = re.search(r"^image_AUROC (\d\.\d+): ", output, flags=re.MULTILINE)
    assert found, output[-4000:]
    assert "Heat maps of the test images" in output
    decisions = re.search(r"(\d+) of (\d+) good test images rejected, (\d+) of (\d+) defective ones caught", output)
    assert decisions, output[-4000:]
    assert (int(decisions.group(2)), int(decisions.group(4))) == (N_GOOD, N_DEFECTIVE)
    assert len(list(tmp_path.rglob("images/**/*.png"))) == N_GOOD + N_DEFECTIVE
    bound = 0.5 + Z_MARGIN * null_auroc_sigma(N_DEFECTIVE, N_GOOD)
    assert float(found.group(1)) > bound, f"image AUROC {found.group(1)} <= {bound:.3f} ({N_DEFECTIVE}/{N_GOOD})"
