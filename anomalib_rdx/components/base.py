"""Lightning base shared by the package's distillation models.

It fixes what the four models have in common as anomalib models: a pre-processor that only resizes
(the model normalises inside, see :mod:`anomalib_rdx.components.normalization`), one-class learning,
no gradient clipping, and validation that stores anomaly maps and scores for anomalib's
post-processor and evaluator (after fitting the optional border calibration of the maps on the normal
validation images, :mod:`anomalib_rdx.components.border_calibration`). Export goes through anomalib's
own ``to_onnx``/``to_openvino``, with a failed export naming its blocking operation and INT8
quantisation keeping the map head, the feature comparison and the convolutions that read the image in
FP32 (:mod:`anomalib_rdx.components.export`).
"""

from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_rdx.data.validation import validate_datamodule

from .allocator import keep_freed_memory_for_reuse
from .checkpoint import (
    CHECKPOINT_KEY,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    check_checkpoint_class,
    package_state,
    refuse_unsafe_checkpoint,
    restore_random_states,
)
from .export import ExportError, blocking_operation, quantize_int8
from .post_processing import NormalQuantilePostProcessor
from .precision import (
    TrainingPrecision,
    check_training_precision,
    full_precision,
    keep_depthwise_convolutions_fp32,
    training_autocast,
)

DEFAULT_IMAGE_SIZE = (256, 256)


class DistillationModule(AnomalibModule):
    """Base for models whose torch model takes ``[0, 1]`` images and returns anomalib's ``InferenceBatch``."""

    TRAINING_ONLY_PREFIXES: tuple[str, ...] = ()
    """State-dict prefixes of networks used in training only (not run by, nor exported with, inference)."""

    def __init__(self, training_precision: TrainingPrecision = "auto", **kwargs: Any) -> None:
        """Keep the training precision; the rest goes to ``AnomalibModule``.

        Args:
            training_precision: ``"auto"``, ``"bf16-mixed"`` or ``"32"``: the precision of the training
                steps' forward passes (see :mod:`anomalib_rdx.components.precision`).
            **kwargs: ``AnomalibModule``'s arguments (pre-, post-processor, evaluator, visualizer).
        """
        super().__init__(**kwargs)
        self.training_precision = check_training_precision(training_precision)

    def training_autocast(self, images: torch.Tensor) -> torch.autocast:
        """Autocast context for the forward passes of a training step at ``training_precision``."""
        return training_autocast(images, self.training_precision)

    def _require_input_size(self) -> tuple[int, int]:
        """Return the pre-processor's output size, checking that it does not normalise."""
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = (
                f"{self.name} normalises images for its teacher itself: give it a pre_processor without "
                "Normalize (e.g. `PreProcessor(transform=Resize((256, 256)))`)."
            )
            raise ValueError(msg)
        if self.input_size is None:
            msg = f"{self.name} needs a pre_processor that resizes images to a fixed size."
            raise ValueError(msg)
        return tuple(int(side) for side in self.input_size)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: ImageNet normalisation happens inside the model.

        Args:
            image_size: Target size. Defaults to ``(256, 256)``.
        """
        transform = Compose([Resize(image_size or DEFAULT_IMAGE_SIZE, antialias=True)])
        return PreProcessor(transform=transform)

    @classmethod
    def configure_post_processor(cls) -> NormalQuantilePostProcessor:
        """Scores calibrated on held-out normal images; labels by anomalib's F1-adaptive rule.

        The normalised score is the score's quantile among the held-out normal validation images (0.5: as
        unusual as the median good part, for every model); a map pixel's, its quantile among the maxima of
        the normal validation maps (0.5: the median good part's hottest spot). The default label threshold
        stays anomalib's F1-adaptive rule on the synthetic validation split: at one epoch on magnetic_tile
        it reached image F1 0.744 (oracle 0.804), where the false-reject rule at 2% (38 held-out normal
        images) flagged 0.5% of good parts but passed 78% of defects (F1 0.363). A line that must bound
        false rejects sets ``NormalQuantilePostProcessor(threshold="false_reject_rate", false_reject_rate=r)`` (CLI:
        ``--model.post_processor anomalib_rdx.components.NormalQuantilePostProcessor
        --model.post_processor.init_args.threshold false_reject_rate``); see that class for picking ``r``.
        """
        return NormalQuantilePostProcessor(threshold="f1_adaptive")

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        *args,
        weights_only: bool = True,
        **kwargs,
    ) -> "DistillationModule":
        """Load with anomalib's loader (``weights_only=True``, its safe types), naming a refused file.

        Raises:
            UnsafeCheckpointError: The file holds something other than weights (its code does not run),
                or ``weights_only=False`` was asked for.
            CheckpointMismatchError: The file holds another model class.
        """
        if not weights_only:
            msg = f"{checkpoint_path}: anomalib_rdx loads checkpoints with weights_only=True only."
            raise UnsafeCheckpointError(msg)
        with refuse_unsafe_checkpoint(checkpoint_path):
            return super().load_from_checkpoint(checkpoint_path, *args, weights_only=True, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model class and the random states (see :mod:`anomalib_rdx.components.checkpoint`)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = package_state(type(self).__name__)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model; keep its random states for a resumed fit."""
        model_keys = [key for key in self.state_dict() if key.startswith("model.")]
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_class(checkpoint, type(self).__name__, model_keys, source)
        super().on_load_checkpoint(checkpoint)
        self._resumed_random_state = checkpoint.get(CHECKPOINT_KEY)

    def on_fit_start(self) -> None:
        """Continue the random streams of the interrupted run when resuming from a checkpoint.

        Lightning restores the checkpoint before this hook (single device and DDP) and creates the
        resumed epoch's loader iterator after it, drawing the shuffling seed from torch's random state:
        restoring here makes a resumed run repeat the uninterrupted one exactly.
        """
        super().on_fit_start()
        self._restore_resumed_random_state()

    def on_train_start(self) -> None:
        """Restore the random states here for strategies that load the checkpoint after ``on_fit_start``."""
        super().on_train_start()
        self._restore_resumed_random_state()

    def _restore_resumed_random_state(self) -> None:
        # Only when this fit resumes (``ckpt_path``): a model loaded with ``load_from_checkpoint`` and then
        # fitted afresh keeps the random state its run was seeded with.
        state = getattr(self, "_resumed_random_state", None)
        if state is not None and self.trainer.ckpt_path is not None:
            restore_random_states(state)
            self._resumed_random_state = None

    def _let_ddp_skip_unused_parameters(self) -> None:
        """Under DDP, let each backward pass synchronise only the parameters it reaches.

        Two of the models have trainable parameters that a backward pass does not reach: RDExpert's
        teacher and student backward passes (manual optimisation) each reach part of them, and
        DualStudentKD's encoder student is a timm ``features_only`` network whose blocks past the deepest
        compared level get no gradient. DDP then needs ``find_unused_parameters``. The model is wrapped in
        DDP after ``setup``, so the flag set here takes effect (``--trainer.strategy ddp`` then works as
        ``ddp_find_unused_parameters_true``).
        """
        strategy = getattr(self._trainer, "strategy", None) if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy):
            # Private: Lightning has no public setter once the strategy is built from ``--trainer.strategy
            # ddp``. Checked against Lightning 2.6 (``DDPStrategy._setup_model`` passes ``_ddp_kwargs`` to
            # ``DistributedDataParallel``); tests/test_private_hooks.py fails if that changes.
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def prepare_data(self) -> None:
        """Check the datamodule's folders before any split is made or anything is written.

        Raises:
            DatasetError: Naming every unreadable image, mask without an image or mask of another size.
        """
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None:
            validate_datamodule(datamodule)

    def setup(self, stage: str | None = None) -> None:
        """Refuse to train on a datamodule without training images; prepare DDP and the training step's speed.

        For a fit: depthwise convolutions with gradients compute in FP32 under bf16 autocast
        (:func:`~anomalib_rdx.components.precision.keep_depthwise_convolutions_fp32`) and glibc keeps freed
        activations mapped for the next step (:func:`~anomalib_rdx.components.allocator.keep_freed_memory_for_reuse`).
        """
        super().setup(stage)
        self._let_ddp_skip_unused_parameters()
        if stage == "fit":
            keep_depthwise_convolutions_fp32(self.model)  # a no-op for FP32 steps, faster bf16 ones
            keep_freed_memory_for_reuse()  # large activations stay mapped between steps
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        train_data = getattr(datamodule, "train_data", None)
        if stage == "fit" and train_data is not None and len(train_data) == 0:
            root = getattr(datamodule, "root", None)
            where = Path(root) / getattr(datamodule, "category", "") if root is not None else type(datamodule).__name__
            msg = (
                f"No training images in '{where}': {self.name} learns from normal images, expected in its "
                "train/good folder."
            )
            raise ValueError(msg)

    def on_validation_epoch_start(self) -> None:
        """Fit the border calibration of the maps (when the network has it on) before validation scores anything.

        One extra forward pass, in FP32, over the normal images of the whole validation split, read in this
        process (no loader workers to start; under DDP every process reads the whole split and fits the same
        statistics). The torch random state is restored afterwards, so the training stream does not
        depend on the switch. With test-time flips whose image score reads the image's own map
        (``flip_scope="map"``), that map's statistics are fitted from the same pass too.
        """
        super().on_validation_epoch_start()
        network = self.model
        calibration = getattr(network, "border_calibration", None)
        if calibration is None or not calibration.enabled:
            return
        score_calibration = network.score_calibration if network.scores_own_view else None
        fitted = [calibration] if score_calibration is None else [calibration, score_calibration]
        loaders = self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        transform = self.pre_processor.transform if isinstance(self.pre_processor, PreProcessor) else None
        for statistics in fitted:
            statistics.start_fit()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for loader in loaders:
                in_process = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)
                for batch in in_process:
                    normal = batch.gt_label == 0
                    if not bool(normal.any()):
                        continue
                    images = batch.image[normal].to(self.device)
                    images = transform(images) if transform is not None else images
                    with full_precision(images):
                        _, view_maps = network.maps_of_views(images)
                    calibration.observe(network.average_views(view_maps))
                    if score_calibration is not None:
                        score_calibration.observe(network.own_view(view_maps))
        for statistics in fitted:
            statistics.finish_fit()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Store anomaly maps and scores of a validation batch, computed in FP32 under any training precision."""
        del args, kwargs
        with full_precision(batch.image):
            predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (manual optimisation forbids it), no sanity validation, safe checkpoint reading.

        ``plugins`` installs :class:`SafeCheckpointIO`, anomalib's checkpoint IO with ``weights_only=True``
        fixed, so ``--ckpt_path`` never runs code from the file.
        """
        if getattr(self, "_checkpoint_io", None) is None:
            self._checkpoint_io = SafeCheckpointIO(extra_safe_globals=self.checkpoint_safe_globals())
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0, "plugins": [self._checkpoint_io]}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS

    def check_exportable(self) -> None:
        """Raise :class:`ExportError` when the configured inference cannot be expressed as a graph."""

    def to_onnx(self, export_root: Path | str, *args, **kwargs) -> Path:
        """Export to ONNX with anomalib; a failure raises :class:`ExportError` naming the blocking operation."""
        self.check_exportable()
        try:
            return super().to_onnx(export_root, *args, **kwargs)
        except Exception as error:
            operation = blocking_operation(error)
            blocker = f"operation {operation}" if operation else f"{type(error).__name__}: {str(error)[:300]}"
            msg = f"{self.name} cannot be exported to ONNX: the exporter could not translate {blocker}."
            raise ExportError(msg) from error

    @staticmethod
    def _post_training_quantization_ov(model: Any, datamodule: AnomalibDataModule | None = None) -> Any:
        """INT8 post-training quantisation that keeps the accuracy-critical operations in FP32 (``quantize_int8``)."""
        return quantize_int8(model, datamodule)
