"""A synthetic validation split whose anomalies can be seen.

anomalib's ``val_split_mode="synthetic"`` holds out normal training images and blends a Perlin-noise
texture into half of them, with a blend factor drawn from (0.01, 0.2) (DTD textures when
``./datasets/dtd`` exists). At a blend of a few percent the change is smaller than the material's own
texture: on magnetic_tile (40 anomalies made from 80 training images, compared at the models' 256x256
input), 40% of those anomalies change the pixels inside their mask by less, on average, than the tile
varies locally (mean absolute deviation from a 9x9 local mean), and 15% by less than half of that. A
large part of the split is labelled anomalous while it looks normal, so every choice made on it (recipe,
image score, checkpoint, F1-adaptive threshold) reads mostly label noise: one RDExpert checkpoint that
scores 0.82 image AUROC on the real test defects scores 0.51 there.

:class:`SyntheticValidation` is a Lightning callback that re-makes the split from the *same* held-out
normal images (anomalib's split, its seed and ratio) with a blend factor range the user names, after the
datamodule has been set up and before any validation runs. The anomalous images and masks are written
to ``<default_root_dir>/synthetic_validation/seed<seed>_blend<low>-<high>/`` so they can be looked at.
With it in a config::

    trainer:
      callbacks:
        - class_path: anomalib_rdx.data.SyntheticValidation
          init_args:
            blend_factor: [0.1, 1.0]
"""

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import Split, read_image
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torchvision.transforms.v2 import Transform

ANOMALIB_BLEND_FACTOR = (0.01, 0.2)
"""The blend factor range of anomalib's own synthetic validation split."""


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write through a temporary file, so a process reading the same split never sees half a file."""
    encoded, data = cv2.imencode(".png", pixels)
    if not encoded:
        msg = f"could not encode the synthetic anomaly {path}"
        raise OSError(msg)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data.tobytes())
    partial.replace(path)


def check_blend_factor(blend_factor: tuple[float, float]) -> tuple[float, float]:
    """Return ``blend_factor`` as floats; raise ``ValueError`` unless it is a range inside [0, 1]."""
    low, high = (float(value) for value in blend_factor)
    if not 0 <= low <= high <= 1:
        msg = f"blend_factor must be a range (low, high) with 0 <= low <= high <= 1, got {tuple(blend_factor)!r}"
        raise ValueError(msg)
    return low, high


def blended_anomalies(
    normal_samples: pd.DataFrame,
    folder: Path,
    blend_factor: tuple[float, float],
    seed: int,
    anomalous_ratio: float = 0.5,
) -> pd.DataFrame:
    """Turn ``anomalous_ratio`` of ``normal_samples`` into Perlin anomalies blended at ``blend_factor``.

    Args:
        normal_samples: anomalib samples (``image_path``, ``label``, ``label_index``, ``mask_path``,
            ``split``) of normal images only.
        folder: Where the anomalous images (``abnormal/``) and masks (``ground_truth/``) are written.
        blend_factor: Range the blend factor of each anomaly is drawn from (0: invisible, 1: opaque).
        seed: Seed of the image choice and of the anomalies; the global random state is left as it was.
        anomalous_ratio: Share of the images made anomalous.

    Returns:
        The samples: the untouched normal images and the anomalous ones (label 1, with masks).

    Raises:
        ValueError: If ``normal_samples`` holds an anomalous image or ``blend_factor`` is not a range
            inside [0, 1].
    """
    low, high = check_blend_factor(blend_factor)
    if (normal_samples.label_index == 1).any():
        msg = "synthetic anomalies are made from normal images only; the source samples hold anomalous ones"
        raise ValueError(msg)
    columns = ["image_path", "label", "label_index", "mask_path", "split"]
    normal_samples = normal_samples.filter(columns)
    chosen = normal_samples.sample(int(anomalous_ratio * len(normal_samples)), random_state=seed)
    images, masks = folder / "abnormal", folder / "ground_truth"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = PerlinAnomalyGenerator(probability=1.0, blend_factor=(low, high))  # draws at construction
        for number, source in enumerate(chosen.image_path):
            image, mask = generator(read_image(source, as_tensor=True))
            name = f"{number:04d}.png"
            rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            _write_png(images / name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            _write_png(masks / name, (mask.squeeze().numpy() * 255).round().astype(np.uint8))
            rows.append(
                {
                    "image_path": str(images / name),
                    "label": "abnormal",
                    "label_index": 1,
                    "mask_path": str(masks / name),
                    "split": Split.VAL,
                }
            )
    return pd.concat([normal_samples.drop(chosen.index), pd.DataFrame(rows)], ignore_index=True)


class BlendedSyntheticDataset(AnomalibDataset):
    """Held-out normal images, half of them with visible synthetic anomalies (see the module docstring).

    Args:
        augmentations: The validation augmentations of the split it replaces.
        source_samples: The held-out normal images.
        folder: Where the anomalous images and masks are written.
        blend_factor: Range of the anomalies' blend factor.
        seed: Seed of the image choice and the anomalies.
    """

    def __init__(
        self,
        augmentations: Transform | None,
        source_samples: pd.DataFrame,
        folder: Path,
        blend_factor: tuple[float, float],
        seed: int,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.source_samples = source_samples
        self.blend_factor = blend_factor
        self.seed = seed
        self.samples = blended_anomalies(source_samples, folder, blend_factor, seed)
        self.samples.attrs["task"] = "segmentation"


class SyntheticValidation(Callback):
    """Replace anomalib's synthetic validation split by one with anomalies blended at ``blend_factor``.

    Needs ``val_split_mode="synthetic"`` (the held-out normal images are taken from anomalib's split, so
    the training images stay the same); with another split mode it raises instead of validating on
    something else.

    Args:
        blend_factor: Range of the anomalies' blend factor. Defaults to ``(0.1, 1.0)``: at 0.1 the change
            inside the mask is about the size of magnetic_tile's local texture variation, so 95% of the
            anomalies change their pixels more than the texture varies (60% with anomalib's ``(0.01, 0.2)``).
        seed: Seed of the anomalies. ``None``: the datamodule's seed.
    """

    def __init__(self, blend_factor: tuple[float, float] = (0.1, 1.0), seed: int | None = None) -> None:
        self.blend_factor = check_blend_factor(blend_factor)
        self.seed = seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Swap the split once, after the datamodule's own setup."""
        del pl_module, stage
        replace_validation_split(
            trainer.datamodule, self.blend_factor, Path(trainer.default_root_dir) / "synthetic_validation", self.seed
        )


def replace_validation_split(
    datamodule: object, blend_factor: tuple[float, float], root: Path, seed: int | None = None
) -> BlendedSyntheticDataset:
    """Swap a set-up datamodule's synthetic validation split for one blended at ``blend_factor``.

    What :class:`SyntheticValidation` does inside a Lightning run, for code that sets a datamodule up
    itself. A split already made at the same range and seed is kept; another is re-made from the same
    held-out images.

    Args:
        datamodule: An anomalib datamodule set up with ``val_split_mode="synthetic"``.
        blend_factor: Range of the anomalies' blend factor.
        root: The images go to ``root/seed<seed>_blend<low>-<high>/``.
        seed: Seed of the anomalies. ``None``: the datamodule's seed.

    Raises:
        ValueError: If the datamodule's validation data is not anomalib's synthetic split.
    """
    validation = getattr(datamodule, "val_data", None)
    seed = seed if seed is not None else getattr(datamodule, "seed", None) or 0
    low, high = check_blend_factor(blend_factor)
    if isinstance(validation, BlendedSyntheticDataset):
        if validation.blend_factor == (low, high) and validation.seed == seed:
            return validation
    elif not isinstance(validation, SyntheticAnomalyDataset):
        msg = (
            "SyntheticValidation re-makes anomalib's synthetic validation split: set the datamodule's "
            f"val_split_mode='synthetic' (its validation data is {type(validation).__name__})."
        )
        raise ValueError(msg)
    datamodule.val_data = BlendedSyntheticDataset(
        augmentations=validation.augmentations,
        source_samples=validation.source_samples,
        folder=root / f"seed{seed}_blend{low:g}-{high:g}",
        blend_factor=(low, high),
        seed=seed,
    )
    return datamodule.val_data
