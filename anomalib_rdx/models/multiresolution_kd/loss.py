"""Multiresolution distillation loss of MKD (Salehi et al., CVPR 2021).

``loss = sum_l (1 - cos(flat(E_l), flat(C_l))) + lambda * sum_l MSE(E_l, C_l)`` over the compared
layers ``l`` of expert ``E`` and cloner ``C``: the direction term makes the cloner follow the expert's
activation pattern, the distance term its magnitude. The same quantity per image is MKD's anomaly
score.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def per_image_discrepancy(
    expert: Sequence[torch.Tensor],
    cloner: Sequence[torch.Tensor],
    mse_weight: float,
) -> torch.Tensor:
    """MKD's multi-layer discrepancy of each image, shape ``(B,)``."""
    total = torch.zeros(expert[0].shape[0], device=expert[0].device)
    for e, c in zip(expert, cloner, strict=True):
        direction = 1 - F.cosine_similarity(e.flatten(1), c.flatten(1), dim=1)
        distance = (e - c).pow(2).flatten(1).mean(dim=1)
        total = total + direction + mse_weight * distance
    return total


class MultiresolutionDistillationLoss(nn.Module):
    """Batch mean of :func:`per_image_discrepancy`.

    Args:
        mse_weight: Weight ``lambda`` of the MSE term (paper: 0.5 for MVTec AD, 0.01 otherwise).
    """

    def __init__(self, mse_weight: float = 0.5) -> None:
        super().__init__()
        self.mse_weight = mse_weight

    def forward(self, expert: Sequence[torch.Tensor], cloner: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean discrepancy over the batch."""
        return per_image_discrepancy(expert, cloner, self.mse_weight).mean()
