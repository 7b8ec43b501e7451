"""PyTorch model of DSKD (Yao & Gao, 2024).

Paper: "Dual-Student Knowledge Distillation Networks for Unsupervised Anomaly Detection".

One frozen pretrained teacher and two students of the same scale with inverted structures:

- ``Se`` (encoder-shaped): a randomly initialised copy of the teacher's architecture that reads the
  image, as in student-teacher feature pyramid matching;
- ``Sd`` (decoder-shaped): a one-class bottleneck and a decoder mirroring the teacher that
  reconstructs the teacher's pyramid, as in reverse distillation.

The **deep-feature (DF) embedding** is the module that fuses multi-scale features into the compact
embedding ``Sd`` decodes. The abstract leaves open whose features feed it. Default
(``df_source="student"``): ``Se``'s features, so the two students "discuss" (and ``Sd``'s loss also
trains ``Se``). Alternatives: ``"teacher"`` (``Sd`` becomes reverse distillation beside ``Se``) and
``"off"`` (no multi-scale fusion: ``Sd`` decodes an embedding of ``Se``'s deepest level alone).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from anomalib_rdx.components import PyramidBottleneck, build_feature_extractor, build_student, check_input_size
from anomalib_rdx.components.network import DistillationNetwork, FlipScope, ImageScore, TestTimeFlips

from .anomaly_map import DualStudentAnomalyMap, ScaleCombination, StudentCombination

Students = Literal["both", "encoder", "decoder"]
DFSource = Literal["student", "teacher", "off"]


class DualStudentKDModel(DistillationNetwork):
    """Teacher, encoder-shaped student ``Se`` and decoder-shaped student ``Sd`` with DF embedding.

    Args:
        backbone: timm CNN of the teacher (and of ``Se``).
        layers: Levels, shallow to deep (module names or ``features_only`` indices).
        input_size: Image size ``(H, W)``.
        pre_trained: Download timm's pretrained teacher weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package for the teacher.
        students: ``"both"`` (DSKD), ``"encoder"`` (``Se`` only) or ``"decoder"`` (``Sd`` only, which
            then embeds the teacher's features).
        df_source: Features the DF embedding fuses: ``"student"``, ``"teacher"`` or ``"off"``.
        scale_combination: How the anomaly map combines scales.
        student_combination: How the anomaly map combines the students.
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
        students: Students = "both",
        df_source: DFSource = "student",
        scale_combination: ScaleCombination = "add",
        student_combination: StudentCombination = "mean",
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
        if students not in {"both", "encoder", "decoder"}:
            msg = f"students must be 'both', 'encoder' or 'decoder', got {students!r}."
            raise ValueError(msg)
        if df_source not in {"student", "teacher", "off"}:
            msg = f"df_source must be 'student', 'teacher' or 'off', got {df_source!r}."
            raise ValueError(msg)
        self.teacher, pyramid = build_feature_extractor(
            backbone, layers, pre_trained=pre_trained, backbone_weights=backbone_weights
        )
        check_input_size(input_size, pyramid, backbone)
        check_input_size(self.map_size, pyramid, backbone, argument="border_padding")
        self.use_encoder_student = students in {"both", "encoder"}
        self.use_decoder_student = students in {"both", "decoder"}
        # Sd alone has no Se to listen to: it embeds the teacher's features (reverse distillation).
        self.df_source: DFSource = "teacher" if students == "decoder" and df_source == "student" else df_source
        self.encoder_student: nn.Module | None = None
        if self.use_encoder_student or self.df_source != "teacher":
            self.encoder_student, _ = build_feature_extractor(backbone, layers, pre_trained=False, requires_grad=True)
        self.df_embedding: nn.Module | None = None
        self.decoder_student: nn.Module | None = None
        if self.use_decoder_student:
            self.df_embedding, self.decoder_student = build_student(backbone, pyramid)
            if self.df_source == "off":
                embedding_channels = self._embedding_channels(self.df_embedding, pyramid.channels[-1])
                self.df_embedding = PyramidBottleneck(
                    pyramid.channels[-1:], pyramid.reductions[-1:], embedding_channels=embedding_channels
                )
        self.anomaly_map_generator = DualStudentAnomalyMap(
            self.map_size, scale_combination, student_combination, sigma=self.map_sigma
        )

    @staticmethod
    def _embedding_channels(bottleneck: nn.Module, deepest_channels: int) -> int:
        """Channels the decoder expects: those of the multi-scale bottleneck it was built with."""
        return getattr(bottleneck, "embedding_channels", None) or 2 * deepest_channels

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the students and the DF embedding."""
        modules = [self.encoder_student, self.df_embedding, self.decoder_student]
        return [parameter for module in modules if module is not None for parameter in module.parameters()]

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Teacher features and each active student's features (``Se`` first), shallow to deep, of normalised images."""
        teacher = list(self.teacher(images).values())
        encoder = list(self.encoder_student(images).values()) if self.encoder_student is not None else None
        students = []
        if self.use_encoder_student:
            students.append(encoder)
        if self.use_decoder_student:
            source = teacher if self.df_source == "teacher" else encoder
            embedding_input = source[-1:] if self.df_source == "off" else source
            students.append(self.decoder_student(self.df_embedding(embedding_input)))
        return teacher, students

    def anomaly_map(self, features: tuple[list[torch.Tensor], list[list[torch.Tensor]]]) -> torch.Tensor:
        """Per-scale, per-student discrepancy maps combined (see :mod:`.anomaly_map`)."""
        teacher, students = features
        return self.anomaly_map_generator(teacher, students)
