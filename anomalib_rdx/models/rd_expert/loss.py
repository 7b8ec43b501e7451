"""Objectives of RD with Expert (Liu et al., AAAI 2025).

Teacher: stay close to the frozen expert on normal images, and make its distance to the expert's
normal features reproduce the synthetic anomaly mask on augmented images, so the teacher tells
anomalies apart. Student: from the teacher's features of the normal and of the augmented image,
reconstruct the teacher's and the expert's features of the normal image, so the student only ever
produces anomaly-free features.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx.components.losses import flat_cosine_distance, pixel_cosine_distance, pixel_cosine_distance_maps

Features = Sequence[torch.Tensor]


def mask_at(mask: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Resize an anomaly mask ``(B, 1, H, W)`` to a feature map's size and binarise it at 0.5."""
    resized = F.interpolate(mask.float(), size=feature.shape[-2:], mode="bilinear", align_corners=False)
    return (resized >= 0.5).float()


class RDExpertLoss(nn.Module):
    """Teacher and student objectives of RD with Expert."""

    @staticmethod
    def teacher_loss(
        teacher_normal: Features,
        teacher_augmented: Features,
        expert_normal: Features,
        expert_augmented: Features,
        anomaly_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher objective, summed over scales.

        Args:
            teacher_normal: Teacher features of the normal image.
            teacher_augmented: Teacher features of the image with a synthetic anomaly.
            expert_normal: Expert features of the normal image.
            expert_augmented: Expert features of the augmented image.
            anomaly_mask: Synthetic anomaly mask ``(B, 1, H, W)``.

        Returns:
            ``normal + mask + global``: per-pixel cosine distance to the expert on normal images; L1
            between the per-pixel distance teacher(augmented)-expert(normal) and the mask; flattened
            cosine distance between teacher and expert on the augmented image.
        """
        normal = pixel_cosine_distance(teacher_normal, expert_normal)
        mask_term = sum(
            (
                F.l1_loss(pixel_cosine_distance_maps(t, e), mask_at(anomaly_mask, t))
                for t, e in zip(teacher_augmented, expert_normal, strict=True)
            ),
            start=torch.zeros((), device=anomaly_mask.device),
        )
        global_term = flat_cosine_distance(teacher_augmented, expert_augmented)
        return normal + mask_term + global_term

    @staticmethod
    def student_loss(
        student_normal: Features,
        student_augmented: Features,
        teacher_normal: Features,
        expert_normal: Features,
    ) -> torch.Tensor:
        """Student objective: both reconstructions must match teacher and expert features of the normal image."""
        return (
            flat_cosine_distance(teacher_normal, student_normal)
            + flat_cosine_distance(teacher_normal, student_augmented)
            + flat_cosine_distance(expert_normal, student_normal)
            + flat_cosine_distance(expert_normal, student_augmented)
        )
