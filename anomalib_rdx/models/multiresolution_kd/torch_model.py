"""PyTorch model of MKD (Salehi et al., CVPR 2021).

Paper: "Multiresolution Knowledge Distillation for Anomaly Detection".

A frozen pretrained **expert** and a smaller **cloner** trained from scratch on normal images to
reproduce the expert's activations at several layers. The per-image discrepancy over those layers is
the anomaly score; the forward discrepancy map (exportable) or gradient interpretability maps
(PyTorch) localise it.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import Tiler
from torch import nn

from anomalib_rdx.components import ImageNetNormalization, build_feature_extractor, check_input_size
from anomalib_rdx.components.tiling import tile_images, untile_features

from .anomaly_map import DiscrepancyMapGenerator, GradientMethod, gradient_map
from .cloner import Cloner
from .loss import per_image_discrepancy


class MultiResolutionKDModel(nn.Module):
    """Expert and cloner.

    Args:
        backbone: timm CNN expert.
        layers: Compared layers, shallow to deep (names or ``features_only`` indices).
        input_size: Image size ``(H, W)``.
        pre_trained: Download timm's pretrained expert weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package for the expert.
        width_divisor: Cloner width reduction (see :class:`Cloner`).
        convs_per_step: Cloner convolutions per halving of the resolution (see :class:`Cloner`).
        mse_weight: ``lambda`` of the MSE term in loss, score and forward map.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str | int],
        input_size: tuple[int, int],
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        width_divisor: int = 2,
        convs_per_step: int = 2,
        mse_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.normalize = ImageNetNormalization()
        self.expert, pyramid = build_feature_extractor(
            backbone, layers, pre_trained=pre_trained, backbone_weights=backbone_weights
        )
        check_input_size(input_size, pyramid, backbone)
        self.cloner = Cloner(pyramid, width_divisor=width_divisor, convs_per_step=convs_per_step)
        self.mse_weight = mse_weight
        self.anomaly_map_generator = DiscrepancyMapGenerator(input_size, mse_weight)
        self.tiler: Tiler | None = None  # set by anomalib's TilerConfigurationCallback

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Expert (no gradient) and cloner activations of ``[0, 1]`` images."""
        normalized = self.normalize(images)
        return list(self.expert(normalized).values()), self.cloner(normalized)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image discrepancy, differentiable with respect to ``images`` through both networks."""
        normalized = self.normalize(images)
        expert = self.expert.feature_extractor(normalized)  # bypass the extractor's no_grad wrapper
        return per_image_discrepancy(list(expert), self.cloner(normalized), self.mse_weight)

    def gradient_map(self, images: torch.Tensor, method: GradientMethod = "gradient") -> torch.Tensor:
        """Interpretability map ``(B, 1, H, W)`` of the discrepancy (see :func:`gradient_map`)."""
        self.expert.feature_extractor.eval()
        return gradient_map(self.score, images, method, networks=[self.expert, self.cloner])

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Activations in training; per-image discrepancy and forward discrepancy map in evaluation."""
        tiler = None if self.training else getattr(self, "tiler", None)  # absent in pickles of older versions
        expert, cloner = self.features(tile_images(tiler, images))
        if self.training:
            return expert, cloner
        expert, cloner = untile_features(tiler, expert), untile_features(tiler, cloner)
        pred_score = per_image_discrepancy(expert, cloner, self.mse_weight)
        return InferenceBatch(pred_score=pred_score, anomaly_map=self.anomaly_map_generator(expert, cloner))
