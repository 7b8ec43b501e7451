"""Lightning base shared by the package's distillation models.

It fixes what the four models have in common as anomalib models: a pre-processor that only resizes
(the model normalises inside, see :mod:`anomalib_rdx.components.normalization`), one-class learning,
no gradient clipping, and validation that stores anomaly maps and scores for anomalib's
post-processor and evaluator. Export goes through anomalib's own ``to_onnx``/``to_openvino``, with a
failed export naming its blocking operation and INT8 quantisation keeping the map smoothing in FP32
(:mod:`anomalib_rdx.components.export`).
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
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_rdx.data.validation import validate_datamodule

from .checkpoint import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    check_checkpoint_class,
    package_state,
    restore_random_states,
)
from .export import ExportError, blocking_operation, quantize_int8
from .post_processing import NormalQuantilePostProcessor

DEFAULT_IMAGE_SIZE = (256, 256)


class DistillationModule(AnomalibModule):
    """Base for models whose torch model takes ``[0, 1]`` images and returns anomalib's ``InferenceBatch``."""

    TRAINING_ONLY_PREFIXES: tuple[str, ...] = ()
    """State-dict prefixes of networks used in training only (not run by, nor exported with, inference)."""

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
        """Decisions from held-out normal images: reject at most 2% of good parts, scores as normal quantiles.

        See :class:`~anomalib_rdx.components.post_processing.NormalQuantilePostProcessor`; pass
        ``post_processor=NormalQuantilePostProcessor(threshold="f1_adaptive")`` (CLI:
        ``--model.post_processor.init_args.threshold f1_adaptive``) for anomalib's F1-adaptive rule.
        """
        return NormalQuantilePostProcessor()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> "DistillationModule":
        """Lightning's loader, refusing first a checkpoint that holds another model class (naming the file)."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        saved_class = checkpoint.get(CHECKPOINT_KEY, {}).get("model_class")
        if saved_class is not None and saved_class != cls.__name__:
            msg = (
                f"{checkpoint_path} holds an anomalib_rdx.{saved_class} model, not {cls.__name__}: load it with "
                f"anomalib_rdx.{saved_class}.load_from_checkpoint (CLI: --model anomalib_rdx.{saved_class})."
            )
            raise CheckpointMismatchError(msg)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model class and the random states (see :mod:`anomalib_rdx.components.checkpoint`)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = package_state(type(self).__name__)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model; keep its random states for a resumed fit."""
        model_keys = [key for key in self.state_dict() if key.startswith("model.")]
        check_checkpoint_class(checkpoint, type(self).__name__, model_keys)
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
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """With anomalib's tiler set, train on the batch's tiles (see :mod:`anomalib_rdx.components.tiling`)."""
        del batch_idx
        tiler = getattr(self.model, "tiler", None)
        if tiler is not None:
            batch.image = tiler.tile(batch.image)

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
        """Refuse to train on a datamodule without training images; prepare DDP (see below)."""
        super().setup(stage)
        self._let_ddp_skip_unused_parameters()
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

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Store anomaly maps and scores of a validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (manual optimisation forbids it) and no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

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
        """INT8 post-training quantisation with the anomaly-map smoothing kept in FP32 (see ``quantize_int8``)."""
        return quantize_int8(model, datamodule)
