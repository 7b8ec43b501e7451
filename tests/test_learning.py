"""Each model learns on real data: image AUROC on the whole magnetic_tile test split, short CPU budget.

Protocol (the benchmark's, ``anomalib_rdx.benchmark.run_one``): efficientnet_lite0 ImageNet teacher,
256x256, 3 epochs on 100 evenly spread ``train/good`` images, thresholds from synthetic anomalies of
held-out training images, metrics on the whole test split (191 good, 392 defective images).
MultiResolutionKD trains its cloner from scratch at the paper's 128x128 over four expert levels (30
epochs on the same 100 training images).

Bound: image AUROC >= 0.60 (``IMAGE_AUROC_BOUND``). With 191 normal and 392 defective
images, chance gives AUROC 0.5 with a standard deviation of 0.026, so 0.60 is four of them above chance.
Measured (seed 0): see ``MEASURED``. An 80-image subset (40 good, 8 per type; chance's spread 0.065,
bound 0.65) was used before; there the figures moved by up to 0.05 between an Intel Xeon and an AMD
EPYC (DualStudentKD 0.681 -> 0.632, RDExpert 0.686 -> 0.660), the size of chance's spread, so the test
failed on one machine and passed on the other. The whole split makes the bound both stricter (4 instead
of 2.3 standard deviations) and stable.

Localisation, per defect type: pixel AUROC on the good test images plus one defect type must exceed
chance at the one-sided 5% level. Pixels of one image are not independent, so chance is bounded at the
image level: a map that marks whole images, not defects, ranks the defect pixels of n images of a type
against the normal pixels of the others; for 8 images of the type among 48 that AUROC has a standard
deviation of sqrt((8 + 48 + 1) / (12 * 8 * 48)) = 0.111 (Mann-Whitney) and the bound is 1.645 of them
above 0.5, 0.683 (``PIXEL_AUROC_PER_TYPE_BOUND``). Every type has at least 32 images in the whole split,
whose spread is smaller, so the bound is conservative there. ``uneven`` is not asserted: its masks cover
about a quarter of the tile, and the reverse-distillation models localise it at or below chance; the
README reports it (section "Every model under a 15-minute budget") instead of a test pretending.
The papers' claims against plain reverse distillation are not asserted either: at this budget the
differences are within what a different seed changes (README, "Every model under a 15-minute budget").
"""

from pathlib import Path

import pytest

from anomalib_rdx.benchmark import BenchmarkConfig, run_one
from anomalib_rdx.data import make_mvtec_subset

from .conftest import SHARED_MAGNETIC_TILE, null_auroc_sigma, requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

# Measured on a 2-core AMD EPYC (one thread, another job on the other core), seed 0, whole test split:
# image AUROC, pixel AUROC, training seconds.
MEASURED = {
    "RDExpert": (0.672, 0.510, 75),
    "AugmentedRD": (0.736, 0.594, 20),
    "DualStudentKD": (0.643, 0.627, 29),
    "MultiResolutionKD": (0.752, 0.726, 36),
}
IMAGE_AUROC_BOUND = 0.60


PIXEL_AUROC_PER_TYPE_BOUND = 0.5 + 1.645 * null_auroc_sigma(8, 40 + 8)
LOCALISED_TYPES = ("blowhole", "break", "crack", "fray")
SETTINGS = {"MultiResolutionKD": {"image_size": 128, "layers": [1, 2, 3, 4], "epochs": 30}}


@pytest.fixture(scope="module")
def whole_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 100 training images and every test image."""
    root = tmp_path_factory.mktemp("learning_whole_test")
    make_mvtec_subset(SHARED_MAGNETIC_TILE, root / "magnetic_tile", train_good=100)
    return root


@pytest.mark.parametrize("name", list(MEASURED))
def test_image_auroc_clearly_above_chance(
    name: str, whole_test_split: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    config = BenchmarkConfig(
        root=str(whole_test_split),
        backbone_weights=str(lite0_weights),
        num_workers=0,
        seed=0,
        # Quality only: no latency timing, no heat-map image of each of the 583 test images (together about
        # a third of a test's time on a 2-core Xeon).
        measure_costs=False,
        model_options={"visualizer": False},
        **({"image_size": 256, "epochs": 3} | SETTINGS.get(name, {})),
    )
    row = run_one(name, config, tmp_path)
    print(f"{name}: {row}")
    assert row["test_images"] == 583
    assert "latency_ms_per_image_b1" not in row
    assert 0.0 <= row["pixel_AUROC"] <= 1.0
    assert 0.0 <= row["pixel_AUPRO"] <= 1.0
    assert row["image_AUROC"] >= IMAGE_AUROC_BOUND
    localisation = {kind: row[f"{kind}_pixel_AUROC"] for kind in LOCALISED_TYPES}
    assert min(localisation.values()) >= PIXEL_AUROC_PER_TYPE_BOUND, localisation


def test_per_type_bound_is_the_one_sided_five_percent_level_of_chance() -> None:
    assert null_auroc_sigma(1, 1) == pytest.approx(0.5)  # AUROC 0 or 1 with probability 1/2 each
    assert null_auroc_sigma(8, 48) == pytest.approx(0.1112, abs=1e-4)
    assert abs(PIXEL_AUROC_PER_TYPE_BOUND - 0.683) < 1e-3
