"""PyTorch model of RD with Expert (Liu et al., AAAI 2025).

Paper: "Unlocking the Potential of Reverse Distillation for Anomaly Detection".

Three networks:
    - **expert**: the pretrained encoder, frozen; only used in training.
    - **teacher**: a trainable copy of the expert (same architecture and weights at the start).
    - **student**: a one-class bottleneck and a decoder that mirrors the teacher, with Guided
      Information Injection between decoder stages (:mod:`.gii`).

At inference the anomaly map is the sum over scales of ``1 - cos(teacher, student)``, upsampled to
the input size and blurred with a Gaussian of sigma 4; the image score is the map's maximum.
"""

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from anomalib_rdx.components import set_trainable
from anomalib_rdx.components.choices import check_choice
from anomalib_rdx.components.network import FlipScope, ImageScore, TestTimeFlips
from anomalib_rdx.components.reverse_distillation import ReverseDistillationNetwork

from .gii import GuidedInformationInjection

GIIMode = Literal["gated", "ungated", "off"]
MapReference = Literal["teacher", "expert", "both"]
MAP_REFERENCES = ("teacher", "expert", "both")


def resolve_gii_mode(use_expert: bool, gii_mode: GIIMode | None) -> GIIMode:
    """Check the ablation switches and fill in the default GII mode.

    Args:
        use_expert: Whether the teacher is trained against a frozen expert.
        gii_mode: Requested mode, or ``None`` for the default: ``"gated"`` with the expert (the paper),
            ``"off"`` without it (plain reverse distillation).

    Returns:
        The GII mode to build.

    Raises:
        ValueError: If ``gii_mode`` is unknown, or if skip connections are asked for without the expert:
            the student then learns from normal images only, and injected teacher detail lets its
            decoder learn to copy the teacher, anomalies included.
    """
    if gii_mode is None:
        return "gated" if use_expert else "off"
    if gii_mode not in {"gated", "ungated", "off"}:
        msg = f"gii_mode must be 'gated', 'ungated' or 'off', got {gii_mode!r}."
        raise ValueError(msg)
    if not use_expert and gii_mode != "off":
        msg = (
            f"gii_mode={gii_mode!r} with use_expert=False is refused: without the expert the student is trained "
            "on normal images only, and the teacher detail injected into its decoder lets it learn to copy the "
            "teacher, anomalies included. Use use_expert=False alone (plain reverse distillation, GII off) or "
            f"use_expert=True with gii_mode={gii_mode!r}."
        )
        raise ValueError(msg)
    return gii_mode


def resolve_map_reference(use_expert: bool, map_reference: MapReference | None) -> MapReference:
    """Fill in the default map reference and refuse one that needs the expert when there is none.

    ``None`` means ``"both"`` with the expert and ``"teacher"`` without it. ``"both"`` is the default
    because it was better on the synthetic validation split of magnetic_tile (image AUROC 0.688 vs 0.622
    for the paper's ``"teacher"``, pixel AUROC 0.644 vs 0.649; 1 epoch, efficientnet_lite0), and on the
    test split it also localised better (PRO 0.447 vs 0.410, mean per-defect-type pixel AUROC 0.768 vs
    0.748). The paper's value stays available as ``"teacher"``.
    """
    if map_reference is None:
        return "both" if use_expert else "teacher"
    check_choice("map_reference", map_reference, MAP_REFERENCES)
    if map_reference != "teacher" and not use_expert:
        msg = f"map_reference={map_reference!r} compares with the expert, which use_expert=False does not build."
        raise ValueError(msg)
    return map_reference


class RDExpertModel(ReverseDistillationNetwork):
    """Expert-teacher-student network with Guided Information Injection.

    Args:
        backbone: timm CNN used for expert and teacher.
        layers: Teacher levels, shallow to deep (names or ``features_only`` indices).
        input_size: Image size ``(H, W)`` the model is fed.
        pre_trained: Download timm's pretrained weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file (or installed weights package name) for expert and teacher.
        use_expert: With the expert, the teacher is trained (RD with Expert); without, the teacher is
            frozen and only the student learns (plain reverse distillation training).
        gii_mode: ``"gated"`` (GII), ``"ungated"`` (skip connection without gate) or ``"off"``; ``None``
            chooses by ``use_expert`` (see :func:`resolve_gii_mode`, which also refuses skip connections
            without the expert).
        gii_clamp: Clamp the GII gate to ``[0, 1]`` (default) or use the raw similarity (the authors'
            code; see :class:`~anomalib_rdx.models.rd_expert.gii.GuidedInformationInjection`).
        map_reference: Features the student's reconstruction is compared with at inference: ``"teacher"``
            (the paper), ``"expert"`` (the frozen pretrained encoder, which the student is also trained to
            reproduce on normal images) or ``"both"`` (sum of the two maps). With ``"expert"`` or
            ``"both"`` the expert is part of the inference graph. Needs ``use_expert=True``. ``None``:
            ``"both"`` with the expert, ``"teacher"`` without (see :func:`resolve_map_reference`).
        image_score: Image score from the map (see :class:`~anomalib_rdx.components.network.DistillationNetwork`).
        top_k_share: Share of pixels averaged by ``image_score="top_k_mean"``.
        border_padding: Pixels mirrored around the image at inference (see ``DistillationNetwork``).
        border_calibration: Standardise the map per distance to the border (see ``DistillationNetwork``).
        test_time_flips: Maps of mirror images averaged at inference (see ``DistillationNetwork``).
        flip_scope: What the flips change, the map or also the image score (see ``DistillationNetwork``).
        map_sigma: Standard deviation of the map's Gaussian smoothing (see ``DistillationNetwork``).
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str | int],
        input_size: tuple[int, int],
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        use_expert: bool = True,
        gii_mode: GIIMode | None = None,
        gii_clamp: bool = True,
        map_reference: MapReference | None = None,
        image_score: ImageScore = "max",
        top_k_share: float = 0.01,
        border_padding: int = 0,
        border_calibration: bool = False,
        test_time_flips: TestTimeFlips = "none",
        flip_scope: FlipScope = "map",
        map_sigma: float = 4.0,
    ) -> None:
        gii_mode = resolve_gii_mode(use_expert, gii_mode)
        map_reference = resolve_map_reference(use_expert, map_reference)
        super().__init__(
            backbone,
            layers,
            input_size,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            trainable_teacher=use_expert,
            image_score=image_score,
            top_k_share=top_k_share,
            border_padding=border_padding,
            border_calibration=border_calibration,
            test_time_flips=test_time_flips,
            flip_scope=flip_scope,
            map_sigma=map_sigma,
        )
        self.map_reference = map_reference
        self.expert: nn.Module | None = None
        if use_expert:
            self.expert = copy.deepcopy(self.teacher)
            self.expert.requires_grad = False
            set_trainable(self.expert, trainable=False)
        channels = self.pyramid.channels
        # One injection before every decoder stage but the first: stage k starts from level n-k.
        self.gii = nn.ModuleList(
            []
            if gii_mode == "off"
            else [
                GuidedInformationInjection(
                    channels[level], channels[level - 1], gated=gii_mode == "gated", clamp=gii_clamp
                )
                for level in range(len(channels) - 1, 0, -1)
            ],
        )

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters the student optimiser updates: bottleneck, decoder and GII."""
        return [*super().student_parameters(), *self.gii.parameters()]

    def expert_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen expert features of normalised images, shallow to deep."""
        if self.expert is None:
            msg = "This RDExpertModel was built with use_expert=False and has no expert."
            raise RuntimeError(msg)
        return list(self.expert(images).values())

    def student_features(self, teacher_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode the one-class embedding stage by stage, injecting gated teacher detail between stages."""
        feature = self.bottleneck(list(teacher_features))
        outputs = []
        deepest = len(teacher_features) - 1
        for stage_index, stage in enumerate(self.decoder.stages):
            if stage_index > 0 and len(self.gii) > 0:
                level = deepest - stage_index + 1  # level that `feature` reconstructs
                injection = self.gii[stage_index - 1]
                feature = injection(feature, teacher_features[level], teacher_features[level - 1])
            feature = stage(feature)
            outputs.append(feature)
        return outputs[::-1]

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """Teacher features, student reconstruction and, when evaluating against the expert, expert features."""
        teacher_features, student_features = super().features(images)
        if self.training or self.map_reference == "teacher":
            return teacher_features, student_features
        return teacher_features, student_features, self.expert_features(images)

    def anomaly_map(self, features: tuple[list[torch.Tensor], ...]) -> torch.Tensor:
        """Discrepancy of the student with the ``map_reference`` features (summed for ``"both"``)."""
        teacher_features, student_features, *expert = features
        if self.map_reference == "teacher":
            return self.anomaly_map_generator(teacher_features, student_features)
        if self.map_reference == "expert":
            return self.anomaly_map_generator(expert[0], student_features)
        # Both references: their distances are added per level before the one upsampling and blur, which
        # equals the sum of the two maps (both steps are linear) at half the map head's cost.
        generator = self.anomaly_map_generator
        distances = zip(
            generator.distances(student_features, expert[0]),
            generator.distances(student_features, teacher_features),
            strict=True,
        )
        return generator.combine([from_expert + from_teacher for from_expert, from_teacher in distances])
