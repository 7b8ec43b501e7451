"""Reverse distillation network shared by RDExpert and AugmentedRD.

A teacher encoder (any timm CNN), a one-class bottleneck and a student decoder that mirrors the
teacher (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR
2022). Scoring is the same for every reverse-distillation model of the package: the sum over scales
of ``1 - cos(teacher, student)``, upsampled to the input size, blurred with a Gaussian (sigma 4 unless
``map_sigma`` says otherwise),
and the image score is the map's maximum (anomalib's ``AnomalyMapGenerator`` in ``add`` mode, with the
blur as two 1-D passes: :class:`~anomalib_rdx.components.anomaly_map.CosineDistanceMap`).
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .anomaly_map import CosineDistanceMap
from .backbone import build_feature_extractor
from .decoder import build_student, check_input_size
from .network import DistillationNetwork, FlipScope, ImageScore, TestTimeFlips


class ReverseDistillationNetwork(DistillationNetwork):
    """Teacher encoder, one-class bottleneck and mirrored student decoder.

    Args:
        backbone: timm CNN of the teacher.
        layers: Teacher levels, shallow to deep (module names or ``features_only`` indices).
        input_size: Image size ``(H, W)`` the network is fed.
        pre_trained: Download timm's pretrained weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package name for the teacher.
        trainable_teacher: Whether the teacher's parameters receive gradients.
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
        trainable_teacher: bool = False,
        image_score: ImageScore = "max",
        top_k_share: float = 0.01,
        border_padding: int = 0,
        border_calibration: bool = False,
        test_time_flips: TestTimeFlips = "none",
        flip_scope: FlipScope = "map",
        map_sigma: float = 4.0,
    ) -> None:
        super().__init__(
            input_size,
            image_score=image_score,
            top_k_share=top_k_share,
            border_padding=border_padding,
            border_calibration=border_calibration,
            test_time_flips=test_time_flips,
            flip_scope=flip_scope,
            map_sigma=map_sigma,
        )
        self.teacher, self.pyramid = build_feature_extractor(
            backbone,
            layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            requires_grad=trainable_teacher,
        )
        check_input_size(input_size, self.pyramid, backbone)
        check_input_size(self.map_size, self.pyramid, backbone, argument="border_padding")
        self.bottleneck, self.decoder = build_student(backbone, self.pyramid)
        self.anomaly_map_generator = CosineDistanceMap(self.map_size, sigma=self.map_sigma, mode="add")

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters of the student (bottleneck and decoder)."""
        return [*self.bottleneck.parameters(), *self.decoder.parameters()]

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features of normalised images, shallow to deep."""
        return list(self.teacher(images).values())

    def student_features(self, teacher_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstruct teacher features from their one-class embedding, shallow to deep."""
        return self.decoder(self.bottleneck(list(teacher_features)))

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features and the student's reconstruction of them, shallow to deep."""
        teacher_features = self.teacher_features(images)
        return teacher_features, self.student_features(teacher_features)

    def anomaly_map(self, features: tuple[list[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        """Sum over scales of ``1 - cos(teacher, student)``, upsampled and blurred (``map_sigma``)."""
        teacher_features, student_features = features
        return self.anomaly_map_generator(teacher_features, student_features)
