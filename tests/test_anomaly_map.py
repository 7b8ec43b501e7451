"""The separable map head gives anomalib's maps: blur, reverse-distillation map, RDExpert's two references."""

import pytest
import torch
from anomalib.models.components import GaussianBlur2d
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerator

from anomalib_rdx import RDExpert
from anomalib_rdx.components import CosineDistanceMap, SeparableGaussianBlur
from anomalib_rdx.components.anomaly_map import upsample_bilinear
from anomalib_rdx.models.multiresolution_kd.anomaly_map import DiscrepancyMapGenerator


def _dense_blur(sigma: float, channels: int = 1) -> GaussianBlur2d:
    size = 2 * int(4.0 * sigma + 0.5) + 1
    return GaussianBlur2d(sigma=(sigma, sigma), channels=channels, kernel_size=(size, size))


@pytest.mark.parametrize("sigma", [4.0, 2.0])
def test_separable_blur_equals_anomalib_blur(sigma: float) -> None:
    # Non-square maps, two channels, a bright corner: the reflected borders must match as well.
    maps = torch.rand(3, 2, 70, 45, generator=torch.Generator().manual_seed(0))
    maps[:, :, :5, :5] += 10
    expected = _dense_blur(sigma, channels=2)(maps)
    assert torch.allclose(SeparableGaussianBlur(sigma)(maps), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size", [(256, 192), (64, 64), (20, 9)])
def test_matrix_upsampling_equals_bilinear_interpolation(align_corners: bool, size: tuple[int, int]) -> None:
    maps = torch.rand(3, 2, 32, 24, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)
    assert torch.allclose(upsample_bilinear(maps, size, align_corners), expected, rtol=1e-5, atol=1e-6)


def test_separable_blur_does_smooth() -> None:
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1
    blurred = SeparableGaussianBlur(4.0)(impulse)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # mass kept away from the border
    assert blurred[0, 0, 20, 20] < 0.02  # spread over ~2 pi sigma^2 pixels


def _features(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, size, size, generator=generator) for channels, size in ((8, 16), (16, 8), (32, 4))]


@pytest.mark.parametrize("mode", ["add", "multiply"])
def test_cosine_distance_map_equals_anomalib_map(mode: str) -> None:
    student, teacher = _features(0), _features(1)
    ours = CosineDistanceMap((64, 48), mode=mode)(student, teacher)
    reference = AnomalyMapGenerator((64, 48), mode=mode)(student, teacher)
    assert ours.shape == (2, 1, 64, 48)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_rd_expert_both_references_is_the_sum_of_the_two_maps(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = RDExpert(**lite0_teacher, pre_processor=RDExpert.configure_pre_processor((64, 64))).eval()
    network = model.model
    assert network.map_reference == "both"
    with torch.no_grad():
        features = network.features(network.normalize(sample_images))
        teacher, student, expert = features
        both = network.anomaly_map(features)
        anomalib_map = AnomalyMapGenerator((64, 64), mode="add")
        reference = anomalib_map(expert, student) + anomalib_map(teacher, student)
    assert torch.allclose(both, reference, rtol=1e-5, atol=1e-5)


def test_checkpoint_with_anomalib_dense_blur_loads_strictly() -> None:
    # Checkpoints written before the separable blur hold anomalib's 33 x 33 kernel as a buffer.
    generator = DiscrepancyMapGenerator((32, 32), mse_weight=0.01)
    old_state = {"blur.kernel": _dense_blur(4.0).kernel}
    generator.load_state_dict(old_state, strict=True)
    assert generator.blur.kernel.shape == (1, 33)
    assert "blur.kernel" not in generator.state_dict()
