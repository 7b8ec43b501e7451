"""Anomaly maps standardised per distance to the image border (``border_calibration``).

Unit checks on maps with a known fall-off. The switch on a model trained on real magnetic_tile images
(fitted at validation, restored from the checkpoint, served by the exported OpenVINO model) is checked
in ``tests/test_thresholds.py``, whose model has it on.
"""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_rdx import AugmentedRD, RDExpert
from anomalib_rdx.components.border_calibration import BorderCalibration, border_distance
from anomalib_rdx.data import SAMPLE_DATA_ROOT


def falling_off_maps(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Normal-like maps whose mean rises from 1 at the border to 3 inside and whose spread shrinks inwards."""
    generator = torch.Generator().manual_seed(seed)
    distance = border_distance(size, size, 16).float()
    mean = 1 + 2 * distance / 16
    spread = 0.5 - 0.3 * distance / 16
    return mean + spread * torch.randn(count, 1, size, size, generator=generator)


def test_calibrated_normal_maps_have_zero_mean_and_unit_spread_at_every_distance() -> None:
    maps = falling_off_maps(40)
    calibration = BorderCalibration(enabled=True, max_distance=16)
    calibration.start_fit()
    calibration.observe(maps[:25])
    calibration.observe(maps[25:])
    calibration.finish_fit()
    calibrated = calibration(falling_off_maps(40, seed=1))
    distance = border_distance(64, 64, 16)
    for level in (0, 1, 4, 8, 16):
        values = calibrated[..., distance == level]
        assert abs(float(values.mean())) < 0.05, level
        assert abs(float(values.std()) - 1) < 0.05, level
    # the plain maps: the border sits two spreads below the interior, so a border defect must be larger
    plain = falling_off_maps(40, seed=1)
    assert float(plain[..., distance == 0].mean()) < float(plain[..., distance == 16].mean()) - 1.5


def test_identity_when_switched_off_or_not_fitted() -> None:
    maps = falling_off_maps(4)
    assert torch.equal(BorderCalibration(enabled=True)(maps), maps)  # nothing fitted yet
    off = BorderCalibration(enabled=False, max_distance=16)
    off.start_fit()
    off.observe(maps)
    off.finish_fit()
    assert torch.equal(off(maps), maps)


def test_fit_without_normal_images_names_the_setting() -> None:
    calibration = BorderCalibration(enabled=True)
    calibration.start_fit()
    calibration.observe(torch.empty(0, 1, 64, 64))
    with pytest.raises(ValueError, match="border_calibration"):
        calibration.finish_fit()
    with pytest.raises(RuntimeError, match="start_fit"):
        calibration.observe(falling_off_maps(1))


def test_bad_max_distance_is_refused() -> None:
    with pytest.raises(ValueError, match="max_distance"):
        BorderCalibration(max_distance=0)


def test_checkpoint_from_before_the_switch_loads_strictly_as_not_fitted() -> None:
    model = RDExpert(backbone="resnet18", pre_trained=False, border_calibration=True)
    state = {key: value for key, value in model.state_dict().items() if "calibration." not in key}
    model.load_state_dict(state, strict=True)
    assert not model.model.border_calibration.fitted
    assert not model.model.score_calibration.fitted


def test_a_calibrated_checkpoint_switches_the_calibration_on_in_a_model_built_without_it() -> None:
    """Its thresholds were fitted on calibrated maps, so the maps it serves must be calibrated too."""
    trained = RDExpert(backbone="resnet18", pre_trained=False, border_calibration=True)
    calibration = trained.model.border_calibration
    calibration.start_fit()
    calibration.observe(falling_off_maps(4, size=256))
    calibration.finish_fit()
    assert calibration.fitted
    rebuilt = RDExpert(backbone="resnet18", pre_trained=False)
    assert not rebuilt.model.border_calibration.enabled
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    assert rebuilt.model.border_calibration.enabled
    maps = falling_off_maps(2, size=256, seed=1)
    assert torch.equal(rebuilt.model.border_calibration(maps), calibration(maps))


def test_flipped_maps_keep_the_image_score_of_the_calibrated_single_view(
    tmp_path: Path, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    """``flip_scope="map"``: the served map averages four views, the score is the one view's, calibrated as before.

    Both models are validated on the bundled sample (real normal images for the statistics); the averaged
    map varies less than one view, so it gets statistics of its own.
    """
    size = AugmentedRD.configure_pre_processor((128, 128))  # maps reach the interior group (48 px from the border)
    single = AugmentedRD(**lite0_teacher, pre_processor=size, border_calibration=True, visualizer=False)
    flipped = AugmentedRD(
        **lite0_teacher, pre_processor=size, border_calibration=True, test_time_flips="all", visualizer=False
    )
    flipped.model.load_state_dict(single.model.state_dict())
    for model in (single, flipped):
        seed_everything(0)
        datamodule = MVTecAD(
            root=SAMPLE_DATA_ROOT,
            category="magnetic_tile",
            eval_batch_size=8,
            num_workers=0,
            val_split_mode="synthetic",
            val_split_ratio=0.2,
            seed=0,
        )
        engine = Engine(logger=False, default_root_dir=tmp_path, devices=1, accelerator="cpu")
        engine.validate(model, datamodule=datamodule, verbose=False)
    assert single.model.border_calibration.fitted
    assert not single.model.score_calibration.fitted
    assert flipped.model.score_calibration.fitted
    torch.testing.assert_close(flipped.model.score_calibration.mean, single.model.border_calibration.mean)
    torch.testing.assert_close(flipped.model.score_calibration.std, single.model.border_calibration.std)
    assert (flipped.model.border_calibration.std < single.model.border_calibration.std).all()
    images = torch.nn.functional.interpolate(sample_images, size=(128, 128), mode="bilinear")
    with torch.no_grad():
        single_output, flipped_output = single.model.eval()(images), flipped.model.eval()(images)
    torch.testing.assert_close(flipped_output.pred_score, single_output.pred_score)
    assert not torch.allclose(flipped_output.anomaly_map, single_output.anomaly_map)
