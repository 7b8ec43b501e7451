"""Objectives of RD with Expert (Liu et al., AAAI 2025).

Teacher: stay close to the frozen expert on normal images, and make its distance to the expert's
normal features reproduce the synthetic anomaly mask on augmented images, so the teacher tells
anomalies apart. Student: from the teacher's features of the normal and of the augmented image,
reconstruct the teacher's and the expert's features of the normal image, so the student only ever
produces anomaly-free features.

The teacher objective's three terms can be switched off one at a time (``teacher_terms``) for the
ablation of what the expert-teacher training costs; all three is the paper's objective.
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx.components.losses import flat_cosine_distance, pixel_cosine_distance, pixel_cosine_distance_maps

Features = Sequence[torch.Tensor]
TeacherTerm = Literal["normal", "mask", "global"]
TEACHER_TERMS: tuple[TeacherTerm, ...] = ("normal", "mask", "global")


def resolve_teacher_terms(terms: Sequence[str] | None) -> tuple[TeacherTerm, ...]:
    """Check the teacher objective's terms; ``None`` gives all three (the paper's objective).

    Raises:
        ValueError: An unknown or repeated term, or no term at all (the teacher would not learn).
    """
    if terms is None:
        return TEACHER_TERMS
    terms = list(terms)
    unknown = sorted(set(terms) - set(TEACHER_TERMS))
    if unknown or not terms or len(set(terms)) != len(terms):
        msg = f"teacher_loss_terms must be distinct names among {list(TEACHER_TERMS)} (at least one), got {terms}."
        raise ValueError(msg)
    return tuple(term for term in TEACHER_TERMS if term in terms)


def mask_at(mask: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Resize an anomaly mask ``(B, 1, H, W)`` to a feature map's size and binarise it at 0.5."""
    resized = F.interpolate(mask.float(), size=feature.shape[-2:], mode="bilinear", align_corners=False)
    return (resized >= 0.5).float()


class RDExpertLoss(nn.Module):
    """Teacher and student objectives of RD with Expert.

    Args:
        teacher_terms: Terms of the teacher objective to sum (see :meth:`teacher_loss`); ``None`` gives
            all three, the paper's objective.
    """

    def __init__(self, teacher_terms: Sequence[str] | None = None) -> None:
        super().__init__()
        self.teacher_terms = resolve_teacher_terms(teacher_terms)

    def teacher_loss(
        self,
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
            The sum of the chosen terms of ``normal + mask + global``: per-pixel cosine distance to the
            expert on normal images; L1 between the per-pixel distance teacher(augmented)-expert(normal)
            and the mask; flattened cosine distance between teacher and expert on the augmented image.
        """
        terms: list[torch.Tensor] = []
        if "normal" in self.teacher_terms:
            terms.append(pixel_cosine_distance(teacher_normal, expert_normal))
        if "mask" in self.teacher_terms:
            terms.append(
                sum(
                    (
                        F.l1_loss(pixel_cosine_distance_maps(t, e), mask_at(anomaly_mask, t))
                        for t, e in zip(teacher_augmented, expert_normal, strict=True)
                    ),
                    start=torch.zeros((), device=anomaly_mask.device),
                ),
            )
        if "global" in self.teacher_terms:
            terms.append(flat_cosine_distance(teacher_augmented, expert_augmented))
        return sum(terms[1:], start=terms[0])

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
