"""Cosine feature distances shared by the distillation models.

``flat_cosine_distance`` is reverse distillation's loss (each map flattened to one vector); it is
anomalib's ``ReverseDistillationLoss``. ``pixel_cosine_distance`` compares feature vectors pixel by
pixel, as RD with Expert's teacher objective does.
"""

from collections.abc import Sequence

import torch
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from torch.nn import functional as F  # noqa: N812

_reverse_distillation_loss = ReverseDistillationLoss()


def flat_cosine_distance(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> torch.Tensor:
    """Compute anomalib's ``ReverseDistillationLoss`` on contiguous copies of channels-last maps.

    anomalib flattens the maps with ``view``, which channels-last maps (see ``channels_last`` in
    :mod:`anomalib_rdx.components.precision`) do not allow; contiguous maps pass through unchanged.
    """
    return _reverse_distillation_loss([f.contiguous() for f in first], [s.contiguous() for s in second])


def pixel_cosine_distance_maps(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``1 - cos`` between two feature maps ``(B, C, H, W)``, as ``(B, 1, H, W)``."""
    return (1 - F.cosine_similarity(first, second, dim=1)).unsqueeze(1)


def pixel_cosine_distance(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of the mean per-pixel cosine distance."""
    return sum(
        (pixel_cosine_distance_maps(a, b).mean() for a, b in zip(first, second, strict=True)),
        start=torch.zeros(()),
    ).to(first[0].device)
