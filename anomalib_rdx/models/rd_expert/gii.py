"""Guided Information Injection (GII) of RD with Expert (Liu et al., AAAI 2025).

Reverse distillation has no skip connections, so the student loses fine detail. GII adds them, but
lets teacher detail through only where student and teacher already agree: the per-pixel cosine
similarity between the decoder's feature and the teacher's feature of the same scale (computed
without gradient) gates a fused multi-scale teacher feature into the decoder,

    gated = teacher * sim + decoder * (1 - sim),

so normal regions (sim near 1) receive the teacher's detail and anomalous regions (sim low) keep the
student's anomaly-free reconstruction. The gated feature is refined and concatenated with the
decoder feature before the next decoder stage.

Choices the abstract leaves open, made here and switchable:
    - The fused teacher feature adds the teacher feature of this scale to the next shallower teacher
      level, resized and projected to this scale (two scales, as in the authors' release).
    - The similarity is clamped to ``[0, 1]`` so the gate is a convex mix also for teachers whose
      features can point in opposite directions (e.g. EfficientNet's linear bottlenecks); ResNet
      features are non-negative and unaffected. ``clamp=False`` gives the authors' unclamped gate
      (their ``models/student.py``), which extrapolates where the cosine similarity is negative.
    - ``gated=False`` gives the "ungated skip" ablation: the similarity is fixed at 1.
"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx.components.decoder import conv_bn_relu


def gate_features(teacher: torch.Tensor, decoder: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Mix teacher and decoder features by the similarity gate: ``teacher * sim + decoder * (1 - sim)``."""
    return teacher * similarity + decoder * (1 - similarity)


class GuidedInformationInjection(nn.Module):
    """Gate teacher detail into one decoder stage.

    Args:
        channels: Channels of the decoder feature and the teacher feature of this scale.
        shallower_channels: Channels of the next shallower teacher level.
        gated: Gate by student-teacher similarity (GII) or pass the teacher feature ungated.
        clamp: Clamp the gate to ``[0, 1]`` (this package's default) or use the raw cosine similarity
            in ``[-1, 1]`` (the authors' code).
    """

    def __init__(self, channels: int, shallower_channels: int, gated: bool = True, clamp: bool = True) -> None:
        super().__init__()
        self.gated = gated
        self.clamp = clamp
        self.project_shallower = conv_bn_relu(shallower_channels, channels, kernel_size=1)
        self.fuse_teacher = conv_bn_relu(channels, channels)
        self.refine = conv_bn_relu(channels, channels)
        self.merge = conv_bn_relu(2 * channels, channels)

    def similarity(self, decoder: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-pixel gate ``(B, 1, H, W)``, in ``[0, 1]`` when clamped, without gradient."""
        if not self.gated:
            return torch.ones_like(decoder[:, :1])
        with torch.no_grad():
            similarity = F.cosine_similarity(decoder.detach(), teacher, dim=1).unsqueeze(1)
            return similarity.clamp(0, 1) if self.clamp else similarity

    def forward(self, decoder: torch.Tensor, teacher: torch.Tensor, shallower_teacher: torch.Tensor) -> torch.Tensor:
        """Inject gated teacher detail into ``decoder``.

        Args:
            decoder: Decoder output at this scale ``(B, C, H, W)``.
            teacher: Teacher feature at this scale ``(B, C, H, W)``.
            shallower_teacher: Teacher feature of the next shallower level ``(B, C', H', W')``.

        Returns:
            The decoder feature with injected detail, ``(B, C, H, W)``.
        """
        shallower = F.interpolate(shallower_teacher, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        fused_teacher = self.fuse_teacher(teacher + self.project_shallower(shallower))
        gated = gate_features(fused_teacher, decoder, self.similarity(decoder, teacher))
        return self.merge(torch.cat([decoder, self.refine(gated)], dim=1))
