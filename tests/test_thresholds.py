"""Accept/reject decisions from held-out normal images (NormalQuantilePostProcessor, issue 18).

One AugmentedRD (efficientnet_lite0 teacher, 128x128, 2 epochs) is trained on a fixed subset of the real
magnetic_tile data with anomalib's synthetic validation split (half of the training images held out,
half of those turned into synthetic anomalies); its post-processor calibrates on the held-out normal
images. The tests check the false-reject rule against the rate it promises, the exported OpenVINO model
against PyTorch, and the calibrated scores. The model standardises its maps per distance to the image
border (``border_calibration``, fitted on the same normal images at every validation), so the rule and the
export are checked on that path; the unit checks of the calibration are in ``test_border_calibration.py``.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.data import ImageBatch, MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_rdx import AugmentedRD
from anomalib_rdx.benchmark.decisions import DecisionRecorder, image_decisions
from anomalib_rdx.components import NoNormalValidationImagesError, NormalQuantilePostProcessor
from anomalib_rdx.components.border_calibration import border_distance
from anomalib_rdx.components.post_processing import conformal_rank, quantile_transform
from anomalib_rdx.data import make_mvtec_subset

from .cli_helpers import openvino_inferencer
from .conftest import SHARED_MAGNETIC_TILE, requires_shared_data

RATE = 0.1
IMAGE_SIZE = 128
SPREAD = 3.0
"""Allowed distance, in standard deviations, between a measured and the expected false-reject count."""


@pytest.fixture(scope="module")
def calibration_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 training and 100 good + 20 defective test images of magnetic_tile (parent folder)."""
    if not SHARED_MAGNETIC_TILE.is_dir():
        pytest.skip(f"the full magnetic_tile dataset is not at {SHARED_MAGNETIC_TILE}")
    root = tmp_path_factory.mktemp("thresholds")
    make_mvtec_subset(SHARED_MAGNETIC_TILE, root / "magnetic_tile", train_good=160, test_good=100, test_per_defect=4)
    return root


@pytest.fixture(scope="module")
def trained(calibration_data: Path, lite0_teacher: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trained model, its datamodule and engine, and the decisions recorded on the test split."""
    seed_everything(0)
    datamodule = MVTecAD(
        root=calibration_data,
        category="magnetic_tile",
        train_batch_size=8,
        eval_batch_size=16,
        num_workers=0,
        val_split_mode="synthetic",
        val_split_ratio=0.5,
        seed=0,
    )
    model = AugmentedRD(
        **lite0_teacher,
        pre_processor=AugmentedRD.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
        post_processor=NormalQuantilePostProcessor(false_reject_rate=RATE),
        border_calibration=True,
    )
    recorder = DecisionRecorder()
    engine = Engine(
        callbacks=[recorder],
        max_epochs=2,
        default_root_dir=tmp_path_factory.mktemp("run"),
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule, verbose=False)
    return {"model": model.eval(), "datamodule": datamodule, "engine": engine, "recorder": recorder}


def _validation_normal_outputs(trained: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores and shipped labels of the held-out normal validation images (as validation computed them)."""
    model = trained["model"]
    scores, labels = [], []
    with torch.no_grad():
        for batch in trained["datamodule"].val_dataloader():
            raw = model.model(batch.image)
            shipped = model.post_processor(raw)
            normal = batch.gt_label == 0
            scores.append(raw.pred_score[normal])
            labels.append(shipped.pred_label[normal])
    return torch.cat(scores), torch.cat(labels)


@requires_shared_data
def test_false_reject_rule_meets_its_rate_on_held_out_normal_images(trained: dict) -> None:
    scores, labels = _validation_normal_outputs(trained)
    held_out = scores.numel()
    assert held_out >= 30, f"the subset should hold out at least 30 normal images, got {held_out}"
    rank = conformal_rank(held_out, RATE)
    # On the calibration images: exactly the scores above the rank-th smallest are rejected, at most RATE.
    assert int(labels.sum()) == held_out - rank
    assert labels.float().mean() <= RATE

    # On good test parts, never seen in calibration: the number rejected is beta-binomial (the threshold
    # is an order statistic of `held_out` normal scores), with mean `expected` and the spread below.
    good = [row for row in trained["recorder"].rows if row["gt_label"] == 0]
    count = len(good)
    rejected = sum(row["pred_label"] for row in good)
    alpha, beta = held_out + 1 - rank, rank
    expected = alpha / (alpha + beta)
    variance = count * alpha * beta * (alpha + beta + count) / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert abs(rejected - count * expected) <= SPREAD * math.sqrt(variance), (rejected, count, expected)


@requires_shared_data
def test_quantile_scores_are_monotone_and_put_the_median_normal_image_at_one_half(trained: dict) -> None:
    post_processor = trained["model"].post_processor
    scores, _ = _validation_normal_outputs(trained)
    median = scores.quantile(0.5)
    assert float(quantile_transform(median, post_processor.image_knots)) == pytest.approx(0.5, abs=1e-4)
    # Over the whole range seen on the test split and beyond, the map keeps the order and stays in (0, 1).
    knots = post_processor.image_knots
    grid = torch.linspace(float(knots[0]) - 0.1, float(knots[-1]) + 0.1, 2001)
    calibrated = quantile_transform(grid, knots)
    assert torch.all(calibrated[1:] >= calibrated[:-1])
    inside = (grid > knots[1]) & (grid < knots[-2])
    assert torch.all(calibrated[1:][inside[1:]] > calibrated[:-1][inside[1:]])
    assert float(calibrated.min()) > 0.0
    assert float(calibrated.max()) < 1.0
    # The share of validation normal scores below each calibrated level matches that level.
    levels = quantile_transform(scores, knots)
    for level in (0.25, 0.5, 0.75):
        assert float((levels <= level).float().mean()) == pytest.approx(level, abs=2 / scores.numel() + 0.01)


@pytest.mark.parametrize("count", [4, 5, 17, 101, 1001])
@pytest.mark.parametrize("tied", [False, True])
def test_quantile_transform_is_linear_between_knots(count: int, tied: bool) -> None:
    # Between the second and the second-to-last knot the map passes through (knot i, i / (K - 1)) and is
    # linear in between; a run of tied knots (a dozen normal maps' maxima can tie) maps to its first level.
    generator = torch.Generator().manual_seed(count)
    knots = torch.sort(torch.randn(count, generator=generator)).values
    if tied:
        knots = torch.round(knots * 2) / 2
    step = 1 / (count - 1)
    interior = knots[1:-1]
    first_equal = torch.searchsorted(knots, interior).clamp(min=1)  # first knot of each tie run
    assert torch.allclose(quantile_transform(interior, knots), first_equal * step, atol=1e-6)
    gaps = knots[2:-1] - knots[1:-2]
    midpoints = (knots[1:-2] + knots[2:-1]) / 2
    levels = (torch.arange(1, count - 2) + 0.5) * step
    open_segments = gaps > 1e-6
    assert torch.allclose(quantile_transform(midpoints, knots)[open_segments], levels[open_segments], atol=1e-5)
    if tied and count >= 17:
        assert not open_segments.all()  # these knots do hold ties


class _QuantileModule(torch.nn.Module):
    def __init__(self, knots: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("knots", knots)

    def forward(self, scores: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantile_transform(scores, self.knots), quantile_transform(maps, self.knots)


def test_quantile_transform_exports_to_openvino_for_every_batch_row(tmp_path: Path) -> None:
    # Batches of (B, 1) scores and (B, 1, H, W) maps through anomalib's export path (dynamo ONNX, then
    # OpenVINO): an earlier version matched PyTorch on the first row of a score batch only.
    import openvino as ov

    knots = torch.sort(1.35 + 0.3 * torch.rand(101, generator=torch.Generator().manual_seed(0))).values
    generator = torch.Generator().manual_seed(1)
    scores = 1.3 + 0.4 * torch.rand(8, 1, generator=generator)
    maps = 1.3 + 0.4 * torch.rand(8, 1, 16, 16, generator=generator)
    module = _QuantileModule(knots)
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        module,
        (scores, maps),
        tmp_path / "quantiles.onnx",
        input_names=["scores", "maps"],
        dynamic_shapes={"scores": {0: batch}, "maps": {0: batch}},
        dynamo=True,
    )
    converted = ov.convert_model(tmp_path / "quantiles.onnx")
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    served = compiled([scores.numpy(), maps.numpy()])
    expected = module(scores, maps)
    for index, reference in enumerate(expected):
        assert np.allclose(served[compiled.output(index)], reference.numpy(), atol=1e-5)


@requires_shared_data
def test_test_labels_follow_the_stored_thresholds(trained: dict) -> None:
    post_processor = trained["model"].post_processor
    rows = trained["recorder"].rows
    threshold = float(post_processor.normalized_image_threshold)
    for row in rows:
        if abs(row["pred_score"] - threshold) > 1e-6:
            assert row["pred_label"] == int(row["pred_score"] > threshold), row
    figures = image_decisions(rows)
    assert figures["good_images"] == 100
    assert figures["defective_images"] == 20
    assert figures["image_F1_all_defective"] == pytest.approx(2 * 20 / (2 * 20 + 100))
    assert 0.0 <= figures["image_F1_shipped"] <= figures["image_F1_oracle"] + 1e-9
    # The oracle is the best F1 over every cut of the recorded scores (brute force).
    best = 0.0
    for cut in {row["pred_score"] for row in rows}:
        flagged = [(row["gt_label"], row["pred_score"] >= cut) for row in rows]
        hits = sum(1 for label, flag in flagged if label and flag)
        false_alarms = sum(1 for label, flag in flagged if not label and flag)
        best = max(best, 2 * hits / (2 * hits + false_alarms + (20 - hits)))
    assert figures["image_F1_oracle"] == pytest.approx(best)
    shipped = trained["recorder"].metrics()
    assert shipped["false_reject_rate"] == figures["false_reject_rate"]
    assert 0.0 <= shipped["pixel_IoU_shipped"] <= shipped["pixel_F1_shipped"] <= 1.0


@requires_shared_data
def test_exported_openvino_model_gives_the_labels_of_pytorch(trained: dict, tmp_path: Path) -> None:
    model = trained["model"]
    xml = trained["engine"].export(model, ExportType.OPENVINO, export_root=tmp_path)
    inferencer = openvino_inferencer(xml, tmp_path)
    images = sorted((Path(trained["datamodule"].root) / "magnetic_tile" / "test").rglob("*.png"))
    assert len(images) == 120
    torch_labels, openvino_labels, mask_mismatch, pixels = [], [], 0, 0
    for path in images:
        image = read_image(path, as_tensor=True)
        with torch.no_grad():
            expected = model(image[None])
        actual = inferencer.predict(image)
        torch_labels.append(bool(expected.pred_label.item()))
        openvino_labels.append(bool(np.asarray(actual.pred_label).item()))
        expected_mask = expected.pred_mask.numpy().astype(bool).squeeze()
        mask_mismatch += int((np.asarray(actual.pred_mask).astype(bool).squeeze() != expected_mask).sum())
        pixels += expected_mask.size
        assert np.asarray(actual.pred_score).item() == pytest.approx(expected.pred_score.item(), abs=1e-3)
    assert openvino_labels == torch_labels
    assert any(torch_labels), "some test parts should be rejected"
    assert not all(torch_labels), "some test parts should be accepted"
    assert mask_mismatch <= 1e-4 * pixels, f"{mask_mismatch} of {pixels} mask pixels differ"


@requires_shared_data
def test_checkpoint_restores_the_rule_and_its_thresholds(trained: dict) -> None:
    trained_model = trained["model"]
    checkpoint = next(Path(trained["engine"].trainer.default_root_dir).rglob("*.ckpt"))
    loaded = AugmentedRD.load_from_checkpoint(checkpoint).eval()
    assert isinstance(loaded.post_processor, NormalQuantilePostProcessor)
    assert loaded.post_processor.false_reject_rate == RATE
    assert torch.equal(loaded.post_processor.image_threshold, trained_model.post_processor.image_threshold)
    assert torch.equal(loaded.post_processor.image_knots, trained_model.post_processor.image_knots)
    assert loaded.model.border_calibration.enabled
    assert torch.equal(loaded.model.border_calibration.mean, trained_model.model.border_calibration.mean)
    assert torch.equal(loaded.model.border_calibration.std, trained_model.model.border_calibration.std)


@requires_shared_data
def test_validation_fits_the_border_calibration_on_the_normal_images(trained: dict) -> None:
    model = trained["model"]
    calibration = model.model.border_calibration
    assert calibration.fitted
    maps = []
    with torch.no_grad():
        for batch in trained["datamodule"].val_dataloader():
            images = model.pre_processor.transform(batch.image)
            maps.append(model.model(images).anomaly_map[batch.gt_label == 0])
    served = torch.cat(maps)
    assert len(served) >= 30
    distance = border_distance(*served.shape[-2:], calibration.max_distance)
    means = torch.stack([served[..., distance == level].mean() for level in range(calibration.max_distance + 1)])
    assert means.abs().max() < 1e-3, means  # the fit's own images: zero mean at every distance
    # the fall-off the calibration removes is real: the plain maps are lower at the border than inside
    assert float(calibration.mean[0]) < float(calibration.mean[-1])
    # the post-processor fitted its scale on the calibrated maps: its top knot is their largest maximum
    assert float(model.post_processor.pixel_knots[-1]) == pytest.approx(float(served.amax()), rel=1e-4)


def test_cli_builds_the_post_processor_with_its_rate() -> None:
    args = [
        "fit",
        "--model", "anomalib_rdx.AugmentedRD",
        "--model.pre_trained", "false",
        "--model.post_processor", "anomalib_rdx.components.NormalQuantilePostProcessor",
        "--model.post_processor.init_args.false_reject_rate", "0.05",
        "--model.post_processor.init_args.threshold", "false_reject_rate",
        "--data", "anomalib.data.MVTecAD",
    ]  # fmt: skip
    cli = AnomalibCLI(args=args, run=False)
    assert isinstance(cli.model.post_processor, NormalQuantilePostProcessor)
    assert cli.model.post_processor.false_reject_rate == 0.05


def test_distillation_models_default_to_calibrated_scores_with_f1_adaptive_labels() -> None:
    model = AugmentedRD(pre_trained=False)
    assert isinstance(model.post_processor, NormalQuantilePostProcessor)
    assert model.post_processor.threshold == "f1_adaptive"


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("false_reject_rate", 0.0),
        ("false_reject_rate", 1.0),
        ("false_reject_rate", -0.1),
        ("false_reject_rate", 1.5),
        ("pixel_false_positive_rate", 0.0),
        ("pixel_false_positive_rate", 2.0),
        ("threshold", "f1"),
        ("num_knots", 3),
        ("pixel_threshold_rule", "f1"),
        ("map_scale", "pixels"),
    ],
)
def test_bad_argument_raises_naming_it(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        NormalQuantilePostProcessor(**{argument: value})


def test_validation_without_normal_images_raises_naming_the_split() -> None:
    post_processor = NormalQuantilePostProcessor()
    batch = ImageBatch(
        image=torch.rand(2, 3, 16, 16),
        gt_label=torch.tensor([1, 1]),
        pred_score=torch.tensor([0.3, 0.4]),
        anomaly_map=torch.rand(2, 16, 16),
    )
    post_processor.on_validation_epoch_start(None, None)
    post_processor.on_validation_batch_end(None, None, batch)
    with pytest.raises(NoNormalValidationImagesError, match="val_split_mode"):
        post_processor.on_validation_epoch_end(None, None)


def _calibrated_on(normal_maps: torch.Tensor, map_scale: str) -> NormalQuantilePostProcessor:
    post_processor = NormalQuantilePostProcessor(map_scale=map_scale)
    batch = ImageBatch(
        image=torch.rand(len(normal_maps), 3, *normal_maps.shape[-2:]),
        gt_label=torch.zeros(len(normal_maps), dtype=torch.long),
        pred_score=normal_maps.amax(dim=(-2, -1)),
        anomaly_map=normal_maps,
    )
    post_processor.on_validation_epoch_start(None, None)
    post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)
    return post_processor


def test_heat_maps_of_good_parts_stay_low_on_the_normal_maxima_scale() -> None:
    """``normal_maxima``: a good part's map is low but for its hottest spot; ``normal_pixels``: half of it is hot."""
    generator = torch.Generator().manual_seed(0)
    normal_maps = 1.0 + 0.1 * torch.randn(12, 32, 32, generator=generator)
    good_part = normal_maps[:1]
    maxima_knots = _calibrated_on(normal_maps, "normal_maxima").pixel_knots
    by_maxima = quantile_transform(good_part, maxima_knots)
    by_pixels = quantile_transform(good_part, _calibrated_on(normal_maps, "normal_pixels").pixel_knots)
    assert float((by_maxima > 0.5).float().mean()) < 0.01
    assert float((by_pixels > 0.5).float().mean()) > 0.2
    # the hottest pixel of the median good part sits at one half on the maxima scale
    median_maximum = normal_maps.amax(dim=(-2, -1)).quantile(0.5)
    calibrated = quantile_transform(median_maximum, maxima_knots)
    assert float(calibrated) == pytest.approx(0.5, abs=0.02)


def test_calibrated_maps_keep_every_pixel_distinct_against_narrow_knots() -> None:
    """Knots from a dozen normal map maxima are narrow; pixels far below or above them must not tie (float32).

    The numbers are the bundled main job's (knots 2.76-3.89 for maps whose normal pixels reach down to 0).
    """
    maxima = torch.tensor([2.76, 2.80, 2.85, 2.88, 2.91, 2.93, 2.95, 2.96, 3.02, 3.35, 3.88, 3.89])
    knots = torch.quantile(maxima, torch.linspace(0.0, 1.0, 101))
    pixels = torch.arange(0.0, 6.0, 1e-3)
    calibrated = quantile_transform(pixels, knots)
    assert torch.all(calibrated[1:] > calibrated[:-1])
    assert float(calibrated.min()) > 0.0
    assert float(calibrated.max()) < 1.0
