"""Anomaly-map upsampling, smoothing and the reverse-distillation distance map, as separable operations.

anomalib smooths its maps with ``GaussianBlur2d``: one dense ``33 x 33`` convolution for sigma 4. On a
256 x 256 map that is 71 M multiply-adds, more than the rest of the efficientnet_lite0 distillation
networks' heads together: measured with OpenVINO's performance counters on a 2-core CPU (one thread),
the blur was 14 of plain reverse distillation's 34 ms, and RDExpert's two blurs (teacher and expert
references) 29 of 59 ms, in FP32 and INT8 alike (the map head stays in FP32). A Gaussian kernel is the
outer product of two 1-D Gaussians, so the same blur runs as a vertical and a horizontal 33-tap pass
(4.3 M multiply-adds) with the same output up to float rounding. Border handling (reflect), kernel
radius (``4 sigma``) and normalisation are anomalib's.

Bilinear upsampling is separable too: :func:`upsample_bilinear` applies it as two matrix products
(rows, then columns) with the interpolation weights of ``F.interpolate``. OpenVINO's ``Interpolate`` on a
single-channel map was the next largest cost (4.4 ms to upsample eight 64 x 64 maps to 256 x 256 on one
thread, 0.4 ms as matrix products), with the same output to float rounding.
"""

from collections.abc import Sequence

import torch
from anomalib.models.components.filters.blur import compute_kernel_size
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .losses import pixel_cosine_distance_maps


def _interpolation_matrix(size_in: int, size_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """``(size_out, size_in)`` weights of 1-D linear interpolation, exactly as ``F.interpolate`` computes them."""
    basis = torch.eye(size_in, dtype=like.dtype, device=like.device).unsqueeze(1)  # each input sample alone
    return F.interpolate(basis, size=size_out, mode="linear", align_corners=align_corners).squeeze(1).T


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """``F.interpolate(maps, size, mode="bilinear", align_corners=...)`` of ``(B, C, h, w)`` as two matmuls."""
    height, width = maps.shape[-2:]
    rows = _interpolation_matrix(height, size[0], align_corners, maps)
    columns = _interpolation_matrix(width, size[1], align_corners, maps)
    return rows @ maps @ columns.T


class SeparableGaussianBlur(nn.Module):
    """Gaussian blur of ``(B, C, H, W)`` maps as two 1-D passes, equal to anomalib's ``GaussianBlur2d``.

    Args:
        sigma: Standard deviation in pixels; the kernel spans ``4 sigma`` on each side.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        kernel = get_gaussian_kernel1d(compute_kernel_size(sigma), sigma).view(1, -1)
        # Not saved in checkpoints: it follows from sigma.
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Blurred maps, same shape (reflected borders)."""
        return filter2d_separable(maps, self.kernel, self.kernel, border_type="reflect")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # Checkpoints written with anomalib's GaussianBlur2d hold its dense 2-D kernel here; it is
        # recomputed from sigma, so the stale tensor is dropped instead of failing a strict load.
        state_dict.pop(prefix + "kernel", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CosineDistanceMap(AnomalyMapGenerator):
    """anomalib's reverse-distillation anomaly map with the separable blur.

    Per level ``1 - cos(teacher, student)`` over channels, upsampled bilinearly (corners aligned) to
    ``image_size``, added or multiplied over levels (``mode``), then blurred with a Gaussian of
    ``sigma``: anomalib's ``AnomalyMapGenerator`` output, computed with :func:`upsample_bilinear` and
    :class:`SeparableGaussianBlur`.
    :meth:`distances` and :meth:`combine` split the two steps so that a model comparing the student
    with two references (RDExpert's teacher and expert) adds their distances before the one upsampling
    and blur, which is exact for ``mode="add"``.

    Args:
        image_size: Output size ``(H, W)``.
        sigma: Standard deviation of the Gaussian blur.
        mode: ``"add"`` or ``"multiply"`` the levels.
    """

    def __init__(
        self,
        image_size: tuple[int, int] | torch.Size,
        sigma: float = 4,
        mode: AnomalyMapGenerationMode | str = AnomalyMapGenerationMode.ADD,
    ) -> None:
        super().__init__(image_size=image_size, sigma=sigma, mode=AnomalyMapGenerationMode(mode))
        self.blur = SeparableGaussianBlur(sigma)

    @staticmethod
    def distances(
        student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per-level ``1 - cos`` maps ``(B, 1, h, w)`` at each level's own resolution."""
        return [
            pixel_cosine_distance_maps(student, teacher)
            for student, teacher in zip(student_features, teacher_features, strict=True)
        ]

    def combine(self, distances: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upsample the per-level distances to ``image_size``, combine them over levels and blur."""
        anomaly_map = None
        for distance in distances:
            level_map = upsample_bilinear(distance, self.image_size, align_corners=True)
            if anomaly_map is None:
                anomaly_map = level_map
            elif self.mode == AnomalyMapGenerationMode.MULTIPLY:
                anomaly_map = anomaly_map * level_map
            else:
                anomaly_map = anomaly_map + level_map
        return self.blur(anomaly_map)

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)``; the argument order does not matter (cosine is symmetric)."""
        return self.combine(self.distances(student_features, teacher_features))
