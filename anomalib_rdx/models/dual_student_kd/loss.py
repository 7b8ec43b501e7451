"""Pyramid matching loss of DSKD (Yao & Gao, 2024).

Both students are distilled against the teacher at every selected scale: the loss is the sum over
students and scales of the mean per-pixel cosine distance ``1 - cos(teacher, student)``. Per-pixel
(rather than flattened) matching is what the anomaly map measures, as in student-teacher feature
pyramid matching.
"""

from collections.abc import Sequence

import torch
from torch import nn

from anomalib_rdx.components.losses import pixel_cosine_distance


class PyramidMatchingLoss(nn.Module):
    """Sum over students and scales of the mean per-pixel cosine distance to the teacher."""

    @staticmethod
    def forward(teacher: Sequence[torch.Tensor], students: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Compute the loss.

        Args:
            teacher: Teacher features, shallow to deep.
            students: The features of each active student, each shallow to deep.
        """
        return sum((pixel_cosine_distance(student, teacher) for student in students), start=torch.zeros(()))
