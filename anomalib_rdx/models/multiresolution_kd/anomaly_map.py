"""Anomaly maps of MKD (Salehi et al., CVPR 2021).

- :class:`DiscrepancyMapGenerator`: the forward map, the per-pixel expert-cloner discrepancy of every
  compared layer (``1 - cos`` over channels plus ``lambda`` times the mean squared difference),
  upsampled to the input, summed over layers and blurred. It needs no backward pass, so it is the
  map of the exported (ONNX/OpenVINO) model.
- :func:`gradient_map`: the paper's interpretability maps, gradients of the image's discrepancy with
  respect to the input pixels: ``"gradient"`` (vanilla), ``"smoothgrad"`` (averaged over noisy copies
  of the input) and ``"guided"`` (guided backpropagation: only positive gradients pass each ReLU),
  absolute value, maximum over colour channels, Gaussian-smoothed. PyTorch only.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812

GradientMethod = Literal["gradient", "smoothgrad", "guided"]


def gaussian_blur(sigma: float) -> GaussianBlur2d:
    """Anomalib's Gaussian blur with the usual ``4 sigma`` kernel radius."""
    kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
    return GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(sigma, sigma))


class DiscrepancyMapGenerator(nn.Module):
    """Forward anomaly map from expert and cloner activations.

    Args:
        image_size: Output size ``(H, W)``.
        mse_weight: Weight of the squared-difference term, as in the loss.
        sigma: Standard deviation of the Gaussian blur.
    """

    def __init__(self, image_size: tuple[int, int], mse_weight: float, sigma: float = 4.0) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.mse_weight = mse_weight
        self.blur = gaussian_blur(sigma)

    def forward(self, expert: Sequence[torch.Tensor], cloner: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map ``(B, 1, H, W)``."""
        anomaly_map = torch.zeros(expert[0].shape[0], 1, *self.image_size, device=expert[0].device)
        for e, c in zip(expert, cloner, strict=True):
            layer_map = 1 - F.cosine_similarity(e, c, dim=1).unsqueeze(1)
            layer_map = layer_map + self.mse_weight * (e - c).pow(2).mean(dim=1, keepdim=True)
            anomaly_map = anomaly_map + F.interpolate(
                layer_map, size=self.image_size, mode="bilinear", align_corners=False
            )
        return self.blur(anomaly_map)


def _guided_relu_hooks(modules: Sequence[nn.Module]) -> list[Callable[[], None]]:
    """Make every ReLU of ``modules`` pass only positive gradients; return the undo callables."""
    undo: list[Callable[[], None]] = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.ReLU | nn.ReLU6):
                inplace = layer.inplace
                layer.inplace = False  # full backward hooks cannot wrap in-place activations
                handle = layer.register_full_backward_hook(lambda _m, grad_in, _out: (grad_in[0].clamp(min=0),))

                def restore(layer: nn.Module = layer, inplace: bool = inplace, handle: object = handle) -> None:
                    handle.remove()
                    layer.inplace = inplace

                undo.append(restore)
    return undo


def gradient_map(
    score: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    method: GradientMethod,
    networks: Sequence[nn.Module],
    sigma: float = 4.0,
    smoothgrad_samples: int = 8,
    smoothgrad_noise: float = 0.1,
) -> torch.Tensor:
    """Interpretability map of the per-image discrepancy ``score`` with respect to ``images``.

    Args:
        score: Maps ``[0, 1]`` images ``(B, 3, H, W)`` to per-image discrepancies ``(B,)``.
        images: Input batch.
        method: ``"gradient"``, ``"smoothgrad"`` or ``"guided"``.
        networks: Modules whose ReLUs guided backpropagation modifies.
        sigma: Gaussian smoothing of the map.
        smoothgrad_samples: Noisy copies averaged by SmoothGrad.
        smoothgrad_noise: Standard deviation of SmoothGrad's noise, relative to the ``[0, 1]`` range.

    Returns:
        Map ``(B, 1, H, W)``, finite and non-negative.
    """
    if method not in {"gradient", "smoothgrad", "guided"}:
        msg = f"method must be 'gradient', 'smoothgrad' or 'guided', got {method!r}."
        raise ValueError(msg)
    undo = _guided_relu_hooks(networks) if method == "guided" else []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inputs = images.detach().clone()
            samples = smoothgrad_samples if method == "smoothgrad" else 1
            total = torch.zeros_like(inputs)
            for _ in range(samples):
                noisy = inputs + smoothgrad_noise * torch.randn_like(inputs) if method == "smoothgrad" else inputs
                noisy = noisy.detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(score(noisy).sum(), noisy)
                total = total + gradient.abs()
    finally:
        for restore in undo:
            restore()
    saliency = (total / samples).amax(dim=1, keepdim=True)
    return gaussian_blur(sigma).to(saliency.device)(saliency).detach()
