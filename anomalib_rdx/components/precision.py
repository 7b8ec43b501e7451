"""Training precision and memory layout of the package's models.

**Precision.** The models train in bfloat16 mixed precision (Lightning's ``"bf16-mixed"``) by default
only where the CPU has AMX tiles (Intel Sapphire Rapids and later), which run bf16 matrix products at
several times the FP32 rate. Elsewhere the default stays FP32: on a CPU with AVX512-BF16 but no AMX,
bf16 convolutions take longer than FP32 ones (measured on such a Xeon: an RDExpert training step at
0.78x to 0.87x the FP32 speed, though with 31% less peak memory; ``python -m
anomalib_rdx.benchmark.training_speed --variants default fp32 bf16-mixed`` measures it on any
machine). The default reaches the Trainer through the models' ``trainer_arguments``, but a precision the user gives
anomalib's Engine (``Engine(precision=32)``, ``--trainer.precision 32`` or the config's
``trainer.precision``) always wins.

**Memory layout.** Training steps feed the networks channels-last images
(:func:`channels_last`): oneDNN's convolutions, depthwise ones above all, are faster in that layout
on a CPU (measured in FP32 on one thread: 1.08x to 1.33x per training step, depending on the model).
Weights, validation, inference and export keep PyTorch's default layout.

**Evaluation stays FP32.** Lightning's mixed precision also autocasts validation, test and predict
steps; the models score those batches under :func:`full_precision`, so thresholds and normalisation
are fitted to the same FP32 maps that the exported model computes.
"""

import inspect
from typing import Any

import torch
from anomalib.engine.engine import _TrainerArgumentsCache

MIXED_PRECISION = "bf16-mixed"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), as PyTorch detects them."""
    detect = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(detect()) if detect is not None else False


def default_training_precision() -> str | None:
    """``"bf16-mixed"`` for CPU training on a CPU with AMX, else ``None`` (Lightning's FP32 default).

    With a CUDA device visible, Lightning's ``accelerator="auto"`` trains on it, where the CPU's AMX
    says nothing, so the default stays FP32 there.
    """
    return MIXED_PRECISION if cpu_has_amx() and not torch.cuda.is_available() else None


def precision_requested_by_user() -> Any:
    """Return the precision given to anomalib's Engine by its caller, or ``None`` when none was given.

    anomalib's Engine merges a model's ``trainer_arguments`` over the user's Trainer arguments, so a
    model default would silently replace an explicit ``Engine(precision=32)``. The Engine reads
    ``trainer_arguments`` from its ``_TrainerArgumentsCache``, which holds the user's arguments (the
    CLI passes ``precision: null`` when the flag is not set); this looks that cache up in the calling
    frames. Called from anywhere else, it returns ``None``.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(6):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, _TrainerArgumentsCache):
                return owner.args.get("precision")
    finally:
        del frame
    return None


def full_precision(images: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off on the images' device: the enclosed code runs in FP32."""
    return torch.autocast(device_type=images.device.type, enabled=False)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """Return the images in channels-last memory layout (no copy when they already are)."""
    return images.contiguous(memory_format=torch.channels_last)
