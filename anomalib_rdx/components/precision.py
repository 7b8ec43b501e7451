"""Training precision and memory layout of the package's models.

**Precision.** The models train in FP32 unless the user asks for another precision with anomalib's
Engine (``Engine(precision="bf16-mixed")``, ``--trainer.precision bf16-mixed`` or the config's
``trainer.precision``); the models put no precision in their ``trainer_arguments``, so the user's choice
is never overridden. bf16 is not the default because it was slower where it was measured: on a Xeon with
AVX512-BF16 but no AMX, bf16 convolutions take longer than FP32 ones (an RDExpert training step at 0.74x
to 0.87x the FP32 speed, with 31% less peak memory), and its quality at equal steps was not shown to be
within 0.01 AUROC of FP32 (``python -m anomalib_rdx.benchmark.training_speed --variants fp32 bf16-mixed``
and ``python -m anomalib_rdx.benchmark.precision_quality`` measure both on any machine; on a CPU with AMX
bf16 may well be faster).

**Memory layout.** Training steps feed the networks channels-last images (:func:`channels_last`):
oneDNN's convolutions, depthwise ones above all, are faster in that layout on a CPU (measured in FP32 on
one thread: 1.08x to 1.33x per training step, depending on the model). Weights, validation, inference
and export keep PyTorch's default layout.

**Evaluation stays FP32.** Lightning's mixed precision also autocasts validation, test and predict
steps; the models score those batches under :func:`full_precision`, so thresholds and normalisation
are fitted to the same FP32 maps that the exported model computes.
"""

import torch


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), as PyTorch detects them."""
    detect = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(detect()) if detect is not None else False


def full_precision(images: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off on the images' device: the enclosed code runs in FP32."""
    return torch.autocast(device_type=images.device.type, enabled=False)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """Return the images in channels-last memory layout (no copy when they already are)."""
    return images.contiguous(memory_format=torch.channels_last)
