"""Anomaly maps standardised per distance to the image border (``border_calibration``).

Unit checks on maps with a known fall-off. The switch on a model trained on real magnetic_tile images
(fitted at validation, restored from the checkpoint, served by the exported OpenVINO model) is checked
in ``tests/test_thresholds.py``, whose model has it on.
"""

import pytest
import torch

from anomalib_rdx import RDExpert
from anomalib_rdx.components.border_calibration import BorderCalibration, border_distance


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
    state = {key: value for key, value in model.state_dict().items() if "border_calibration" not in key}
    model.load_state_dict(state, strict=True)
    assert not model.model.border_calibration.fitted


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
