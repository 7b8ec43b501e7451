"""What the package adds to a Lightning checkpoint: the model class, and random states for resuming.

- ``model_class`` lets a checkpoint of another class fail with a message that names both classes,
  instead of a constructor or state-dict error.
- The torch (CPU and CUDA), NumPy and Python random states at save time are restored when training resumes
  (``--ckpt_path``), so the data order and the synthetic anomalies (Perlin noise, augmentations)
  continue as in an uninterrupted run. Lightning restores optimisers, schedulers and loop counters
  itself.
"""

import random
from typing import Any

import numpy as np
import torch

CHECKPOINT_KEY = "anomalib_rdx"


class CheckpointMismatchError(ValueError):
    """A checkpoint holds another model than the one loading it."""


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


def check_checkpoint_class(checkpoint: dict[str, Any], model_class: str, model_keys: list[str]) -> None:
    """Raise :class:`CheckpointMismatchError` when ``checkpoint`` holds another model.

    Args:
        checkpoint: The loaded Lightning checkpoint.
        model_class: Name of the class loading it.
        model_keys: State-dict keys of the loading model's networks (used for checkpoints saved outside
            this package, which carry no class name).
    """
    saved_class = checkpoint.get(CHECKPOINT_KEY, {}).get("model_class")
    if saved_class is not None and saved_class != model_class:
        msg = (
            f"This checkpoint holds an anomalib_rdx.{saved_class} model, not {model_class}: load it with "
            f"anomalib_rdx.{saved_class} (CLI: --model anomalib_rdx.{saved_class})."
        )
        raise CheckpointMismatchError(msg)
    if saved_class is None:
        saved_keys = set(checkpoint.get("state_dict", {}))
        missing = [key for key in model_keys if key not in saved_keys]
        if missing:
            msg = (
                f"This checkpoint was not saved by anomalib_rdx.{model_class}: it lacks {len(missing)} of the "
                f"model's weights (first: {missing[0]}). Load it with the model class that trained it."
            )
            raise CheckpointMismatchError(msg)
