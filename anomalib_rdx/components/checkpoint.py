"""Checkpoints of the package's models: read as data only, with the model class and random states.

- Every checkpoint is read with ``torch.load(weights_only=True)`` and anomalib's allow-list of safe types
  (``anomalib_safe_globals``): a file whose unpickling would build any other object, i.e. run code, is
  refused with :class:`UnsafeCheckpointError` naming the file, before any of that code runs. This holds for
  ``Model.load_from_checkpoint`` (and so ``anomalib export --ckpt_path``), for the Trainer's ``ckpt_path``
  (``anomalib train/test/predict --ckpt_path``, through :class:`SafeCheckpointIO`) and for the benchmark
  (:func:`load_checkpoint`).
- ``model_class`` lets a checkpoint of another class fail with a message that names both classes,
  instead of a constructor or state-dict error.
- The torch (CPU and CUDA), NumPy and Python random states at save time are restored when training resumes
  (``--ckpt_path``), so the data order and the synthetic anomalies (Perlin noise, augmentations)
  continue as in an uninterrupted run. Lightning restores optimisers, schedulers and loop counters
  itself.
"""

import pickle
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.engine.plugins.checkpoint_io import AnomalibCheckpointIO
from anomalib.utils.serialization import anomalib_safe_globals

CHECKPOINT_KEY = "anomalib_rdx"
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointMismatchError(ValueError):
    """A checkpoint holds another model than the one loading it."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects other than weights and plain data; it was not loaded."""


@contextmanager
def refuse_unsafe_checkpoint(path: str | Path) -> Iterator[None]:
    """Turn a refused ``weights_only`` load, or a class mismatch, into an error that names ``path``."""
    try:
        yield
    except pickle.UnpicklingError as error:
        called = _UNSAFE_GLOBAL.search(str(error))
        detail = f"unpickling it would call {called.group(1)}" if called else str(error).strip().splitlines()[0][:200]
        msg = (
            f"{path} holds something other than weights ({detail}): it was not loaded and none of its code ran. "
            "anomalib_rdx reads checkpoints as data only; load checkpoints written by anomalib or anomalib_rdx."
        )
        raise UnsafeCheckpointError(msg) from None
    except CheckpointMismatchError as error:
        if str(path) in str(error):
            raise
        raise CheckpointMismatchError(f"{path}: {error}") from None


def load_checkpoint(
    path: str | Path,
    extra_safe_globals: Sequence[Any] = (),
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint as data only (``weights_only=True`` with anomalib's safe types).

    Raises:
        UnsafeCheckpointError: Naming ``path``, when the file would build other objects (run code).
    """
    with refuse_unsafe_checkpoint(path), anomalib_safe_globals(extra=extra_safe_globals):
        return torch.load(path, map_location=map_location, weights_only=True)


class SafeCheckpointIO(AnomalibCheckpointIO):
    """anomalib's checkpoint IO, always ``weights_only=True``, naming the file it refuses.

    The Trainer reads ``--ckpt_path`` through it (the models put it in their ``trainer_arguments``).
    Lightning passes ``weights_only=None`` by default, which leaves the choice to ``torch.load``'s
    default; here it is fixed, so an environment variable or a caller cannot turn code execution on.
    """

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Load ``path`` as data only; ``weights_only=False`` is refused."""
        if weights_only is False:
            msg = f"{path}: anomalib_rdx loads checkpoints with weights_only=True only."
            raise UnsafeCheckpointError(msg)
        with refuse_unsafe_checkpoint(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def package_state(model_class: str) -> dict[str, Any]:
    """Model class and current random states, to store under ``CHECKPOINT_KEY``.

    Only tensors and plain Python values, so that ``torch.load(weights_only=True)`` reads the checkpoint.
    """
    key, numpy_state, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "model_class": model_class,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": [key, torch.from_numpy(numpy_state.astype(np.int64)), position, has_gauss, cached_gaussian],
            "python": list(random.getstate()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def restore_random_states(state: dict[str, Any]) -> None:
    """Restore the random states saved by :func:`package_state`."""
    rng = state.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        key, numpy_state, position, has_gauss, cached_gaussian = rng["numpy"]
        np.random.set_state((key, numpy_state.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gaussian = rng["python"]
        random.setstate((version, tuple(internal), gaussian))
        cuda_states = rng.get("cuda", [])
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def check_checkpoint_class(
    checkpoint: dict[str, Any],
    model_class: str,
    model_keys: list[str],
    source: str | Path | None = None,
) -> None:
    """Raise :class:`CheckpointMismatchError` when ``checkpoint`` holds another model.

    Args:
        checkpoint: The loaded Lightning checkpoint.
        model_class: Name of the class loading it.
        model_keys: State-dict keys of the loading model's networks (used for checkpoints saved outside
            this package, which carry no class name).
        source: The checkpoint's file, named in the error when known.
    """
    where = f"{source}: this checkpoint" if source is not None else "This checkpoint"
    saved_class = checkpoint.get(CHECKPOINT_KEY, {}).get("model_class")
    if saved_class is not None and saved_class != model_class:
        msg = (
            f"{where} holds an anomalib_rdx.{saved_class} model, not {model_class}: load it with "
            f"anomalib_rdx.{saved_class} (CLI: --model anomalib_rdx.{saved_class})."
        )
        raise CheckpointMismatchError(msg)
    if saved_class is None:
        saved_keys = set(checkpoint.get("state_dict", {}))
        missing = [key for key in model_keys if key not in saved_keys]
        if missing:
            msg = (
                f"{where} was not saved by anomalib_rdx.{model_class}: it lacks {len(missing)} of the "
                f"model's weights (first: {missing[0]}). Load it with the model class that trained it."
            )
            raise CheckpointMismatchError(msg)
