"""PyTorch model of MKD (Salehi et al., CVPR 2021).

Paper: "Multiresolution Knowledge Distillation for Anomaly Detection".

A frozen pretrained **expert** and a smaller **cloner** trained from scratch on normal images to
reproduce the expert's activations at several layers. The per-image discrepancy over the scored layers
is the anomaly score; the forward discrepancy map (exportable) or a gradient interpretability map
(PyTorch only) localises it. In evaluation, :meth:`MultiResolutionKDModel.forward` computes both and
returns anomalib's ``InferenceBatch``, so ``model(images)``, ``Engine.test`` and ``Engine.predict``
give the same map.

Defaults follow the authors' code (github.com/rohban-lab/Knowledge_Distillation_AD) for its setting,
VGG16 at 128x128: layers after pooling, score over the last three layers, no input normalisation,
the official gradient-map recipe. One departure: the image score is the mean of the top 1% of the
forward map's pixels, not the whole-image discrepancy (``image_score="discrepancy"`` is the paper's).
"""

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx.components import build_feature_extractor, check_input_size
from anomalib_rdx.components.choices import check_choice
from anomalib_rdx.components.network import IMAGE_SCORES, DistillationNetwork

from .anomaly_map import GRADIENT_METHODS, GRADIENT_RECIPES, DiscrepancyMapGenerator, GradientRecipe, gradient_map
from .cloner import Cloner
from .layers import LayerPositions, default_layers, resolve_layer_positions
from .loss import per_image_discrepancy

Localization = Literal["forward", "gradient", "smoothgrad", "guided"]
ScoreLayers = Literal["all", "last3"]
MKDImageScore = Literal["discrepancy", "max", "top_k_mean"]
LOCALIZATIONS = ("forward", *GRADIENT_METHODS)
SCORE_LAYERS = ("all", "last3")
MKD_IMAGE_SCORES = ("discrepancy", *IMAGE_SCORES)


class MultiResolutionKDModel(DistillationNetwork):
    """Expert and cloner of MKD, with the image score and anomaly map of evaluation.

    Args:
        backbone: timm CNN expert. Defaults to ``vgg16``.
        layers: Compared levels, shallow to deep (names or ``features_only`` indices). ``None``: the
            levels compared at strides 4, 8, 16, 32 (see :mod:`.layers`; for VGG the paper's blocks 2-5).
        input_size: Image size ``(H, W)``.
        pre_trained: Download timm's pretrained expert weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package for the expert.
        layer_positions: ``"post_pool"`` compares each level after a 2x2 max-pool (for VGG: the output of
            the block's pooling layer, as the authors' code); ``"pre_pool"`` compares the levels as timm
            returns them. ``None``: ``"post_pool"`` for VGG, ``"pre_pool"`` otherwise.
        score_layers: Layers of the image score and of the map: ``"last3"`` (the authors' detection test;
            all layers when fewer than three are compared) or ``"all"``. Training always uses all.
        normalize_input: ImageNet-normalise the ``[0, 1]`` input before both networks. The authors' MVTec
            loader does not (``False``).
        localization: ``"forward"`` (discrepancy map, exportable) or a gradient map, ``"gradient"``,
            ``"smoothgrad"`` or ``"guided"`` (PyTorch only).
        gradient_recipe: ``"official"`` or ``"raw"`` (see :mod:`.anomaly_map`).
        width_divisor: Cloner width reduction (see :class:`Cloner`).
        convs_per_step: Cloner convolutions per halving of the resolution (see :class:`Cloner`).
        mse_weight: ``lambda`` of the MSE term in loss, score and forward map.
        image_score: ``"top_k_mean"`` (default: the mean of the top ``top_k_share`` pixels of the forward
            discrepancy map), ``"max"`` of that map, or ``"discrepancy"`` (the paper's: the loss over the
            scored layers, averaged over the whole image). An image average dilutes a small defect among
            the normal pixels around it. Chosen on the synthetic validation split (see the model's README).
        top_k_share: Share of the map's pixels averaged by ``"top_k_mean"``.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str | int] | None = None,
        input_size: tuple[int, int] = (128, 128),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        layer_positions: LayerPositions | None = None,
        score_layers: ScoreLayers = "last3",
        normalize_input: bool = False,
        localization: Localization = "forward",
        gradient_recipe: GradientRecipe = "official",
        width_divisor: int = 2,
        convs_per_step: int = 2,
        mse_weight: float = 0.5,
        image_score: MKDImageScore = "top_k_mean",
        top_k_share: float = 0.01,
    ) -> None:
        check_choice("image_score", image_score, MKD_IMAGE_SCORES)
        map_score = "max" if image_score == "discrepancy" else image_score
        super().__init__(input_size, image_score=map_score, top_k_share=top_k_share)
        self.score_from_discrepancy = image_score == "discrepancy"
        check_choice("score_layers", score_layers, SCORE_LAYERS)
        check_choice("localization", localization, LOCALIZATIONS)
        check_choice("gradient_recipe", gradient_recipe, GRADIENT_RECIPES)
        self.layer_positions = resolve_layer_positions(backbone, layer_positions)
        self.layers = list(layers) if layers is not None else default_layers(backbone, self.layer_positions)
        if not normalize_input:
            self.normalize = nn.Identity()  # the authors' loader feeds [0, 1] images
        self.expert, pyramid = build_feature_extractor(
            backbone, self.layers, pre_trained=pre_trained, backbone_weights=backbone_weights
        )
        if self.layer_positions == "post_pool":
            pyramid = replace(pyramid, reductions=tuple(2 * reduction for reduction in pyramid.reductions))
        self.pyramid = pyramid
        check_input_size(input_size, pyramid, backbone)
        self.cloner = Cloner(pyramid, width_divisor=width_divisor, convs_per_step=convs_per_step)
        self.mse_weight = mse_weight
        self.score_layers = score_layers
        self.localization = localization
        self.gradient_recipe = gradient_recipe
        self.anomaly_map_generator = DiscrepancyMapGenerator(input_size, mse_weight)

    @property
    def compared_strides(self) -> tuple[int, ...]:
        """Strides of the compared feature maps relative to the input, shallow to deep."""
        return self.pyramid.reductions

    def _position(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return the expert levels at the configured position (after the 2x2 max-pool for ``post_pool``)."""
        if self.layer_positions == "post_pool":
            return [F.max_pool2d(feature, kernel_size=2, stride=2) for feature in features]
        return list(features)

    def _scored(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return the layers of the image score and the map."""
        return list(features[-3:]) if self.score_layers == "last3" else list(features)

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Expert (no gradient) and cloner activations at every compared layer (of ``normalize``d images)."""
        return self._position(self.expert(images).values()), self.cloner(images)

    def anomaly_map(self, features: tuple[list[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        """Forward discrepancy map over the scored layers."""
        expert, cloner = features
        return self.anomaly_map_generator(self._scored(expert), self._scored(cloner))

    def image_score_of(
        self, features: tuple[list[torch.Tensor], list[torch.Tensor]], anomaly_map: torch.Tensor
    ) -> torch.Tensor:
        """Per-image discrepancy (cosine + lambda MSE) over the scored layers (the paper), or from the map."""
        if not self.score_from_discrepancy:
            return super().image_score_of(features, anomaly_map)
        expert, cloner = features
        return per_image_discrepancy(self._scored(expert), self._scored(cloner), self.mse_weight)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image discrepancy, differentiable with respect to ``images`` through both networks."""
        normalized = self.normalize(images)
        expert = self._position(self.expert.feature_extractor(normalized))  # bypass the extractor's no_grad
        return per_image_discrepancy(self._scored(expert), self._scored(self.cloner(normalized)), self.mse_weight)

    def gradient_map(self, images: torch.Tensor) -> torch.Tensor:
        """Compute the configured gradient map ``(B, 1, H, W)`` (see :func:`.anomaly_map.gradient_map`)."""
        guided = [self.cloner] if self.gradient_recipe == "official" else [self.expert, self.cloner]
        return gradient_map(self.score, images, self.localization, guided, recipe=self.gradient_recipe)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Activations at every compared layer in training; score and configured map in evaluation."""
        output = super().forward(images)
        if self.training or self.localization == "forward":
            return output
        (anomaly_map,) = self.untile([self.gradient_map(self.tile(images))])
        return InferenceBatch(pred_score=output.pred_score, anomaly_map=anomaly_map)
