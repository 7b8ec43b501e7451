"""Training precision and memory layout of the package's models.

**Precision.** Every model takes ``training_precision``: ``"auto"`` (default), ``"bf16-mixed"`` or ``"32"``
(CLI: ``--model.training_precision 32``; config: ``model.init_args.training_precision``). The model's
training step runs its forward passes under :func:`training_autocast`, bfloat16 autocast on the images'
device, and its backward passes and optimiser steps outside it; the weights, the optimiser state and
the losses' cosine distances stay FP32. ``"auto"`` trains in bf16 mixed precision on a CPU with
bfloat16 instructions (AVX512-BF16 or AMX: :func:`cpu_has_native_bf16`) and in FP32 anywhere else
(CPUs without them emulate bf16 slowly; on a GPU the models keep the FP32 they were measured with).

The model decides and not Lightning's ``trainer.precision``: anomalib's Engine lets a model's
``trainer_arguments`` override the user's trainer settings, so a model that asked for bf16 there would
take FP32 away from the user; a model argument is the user's to set from the CLI and the config. A
``trainer.precision="bf16-mixed"`` of the user's is overruled by ``training_precision="32"`` (the step
switches autocast off) and is redundant otherwise.

**Depthwise convolutions stay FP32** under bf16 autocast (:func:`keep_depthwise_convolutions_fp32`):
oneDNN's bf16 depthwise backward is several times slower than its FP32 one on a CPU (measured on an
AVX512-BF16 AMD EPYC, one thread, channels-last, batch 8: 87 vs 42 ms for efficientnet_lite0's
first stride-2 3x3, 117 vs 19 ms for a 144-channel stride-2 5x5), while the dense and pointwise
convolutions run about twice as fast in bf16. Only the convolution's inputs are cast, and only where a
backward pass follows (passes without gradients keep bf16's faster forward); the layer and its weights
are unchanged, and with autocast off (FP32 training, evaluation, export) it runs exactly as ``nn.Conv2d``.

**Memory layout.** Training steps feed the networks channels-last images (:func:`channels_last`):
oneDNN's convolutions, depthwise ones above all, are faster in that layout on a CPU (measured in FP32 on
one thread: 1.08x to 1.33x per training step, depending on the model). Weights, validation, inference
and export keep PyTorch's default layout.

**Evaluation stays FP32.** Lightning's mixed precision also autocasts validation, test and predict
steps; the models score those batches under :func:`full_precision`, so thresholds and normalisation
are fitted to the same FP32 maps that the exported model computes.
"""

from typing import Literal

import torch
from torch import nn

from .choices import check_choice

TrainingPrecision = Literal["auto", "bf16-mixed", "32"]
TRAINING_PRECISIONS = ("auto", "bf16-mixed", "32")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), as PyTorch detects them."""
    detect = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(detect()) if detect is not None else False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as PyTorch detects it."""
    detect = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return cpu_has_amx() or (bool(detect()) if detect is not None else False)


def check_training_precision(precision: str) -> TrainingPrecision:
    """Return ``precision`` if it is one of :data:`TRAINING_PRECISIONS`.

    Raises:
        ValueError: Naming the argument and the accepted values otherwise.
    """
    check_choice("training_precision", precision, TRAINING_PRECISIONS)
    return precision  # type: ignore[return-value]


def resolve_training_precision(precision: TrainingPrecision, device: torch.device) -> Literal["bf16-mixed", "32"]:
    """Return the precision a step on ``device`` runs at: ``"auto"`` is bf16 on a CPU with native bf16, else FP32."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if device.type == "cpu" and cpu_has_native_bf16() else "32"


def training_autocast(images: torch.Tensor, precision: TrainingPrecision) -> torch.autocast:
    """Autocast context of a training step's forward passes: bfloat16, or switched off for FP32."""
    enabled = resolve_training_precision(precision, images.device) == "bf16-mixed"
    return torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=enabled)


def full_precision(images: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off on the images' device: the enclosed code runs in FP32."""
    return torch.autocast(device_type=images.device.type, enabled=False)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """Return the images in channels-last memory layout (no copy when they already are)."""
    return images.contiguous(memory_format=torch.channels_last)


class FP32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes in FP32 under autocast when it is differentiated, else as ``nn.Conv2d``.

    Without gradients (a frozen teacher's or expert's pass under ``torch.no_grad``) the bf16 forward is
    the fast one (2.5x FP32 for efficientnet_lite0's first stride-2 3x3 on the EPYC above), so it is kept.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve; under autocast with a backward pass to come, in FP32 with autocast off for this layer."""
        differentiated = torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad)
        if not differentiated or not torch.is_autocast_enabled(input.device.type):
            return super().forward(input)
        with torch.autocast(device_type=input.device.type, enabled=False):
            return super().forward(input.float())


def keep_depthwise_convolutions_fp32(module: nn.Module) -> int:
    """Make every grouped ``nn.Conv2d`` of ``module`` an :class:`FP32Conv2d` (in place; weights untouched).

    The layers keep their parameters, state-dict keys and FP32 behaviour; only their class changes, so
    under bf16 autocast they compute in FP32 (see the module docstring for why). Subclasses of
    ``nn.Conv2d`` with forwards of their own (timm's ``Conv2dSame``) are left as they are.

    Returns:
        How many convolutions were switched (already switched ones are not counted again).
    """
    switched = 0
    for layer in module.modules():
        if type(layer) is nn.Conv2d and layer.groups > 1:
            layer.__class__ = FP32Conv2d
            switched += 1
    return switched
