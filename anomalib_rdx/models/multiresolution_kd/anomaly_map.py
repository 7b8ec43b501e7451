"""Anomaly maps of MKD (Salehi et al., CVPR 2021).

- :class:`DiscrepancyMapGenerator`: the forward map, the per-pixel expert-cloner discrepancy of every
  scored layer (``1 - cos`` over channels plus ``lambda`` times the mean squared difference),
  upsampled to the input, summed over layers and blurred. It needs no backward pass, so it is the
  map of the exported (ONNX/OpenVINO) model. The authors' code has no forward map.
- :func:`gradient_map`: the paper's interpretability maps, gradients of the image's discrepancy with
  respect to the input pixels: ``"gradient"`` (vanilla), ``"smoothgrad"`` (averaged over noisy copies
  of the input) and ``"guided"`` (guided backpropagation: only positive gradients pass each ReLU).
  Two recipes (``GradientRecipe``):

  - ``"official"`` (the authors' code): ``|gradient|`` summed over colour channels, scaled per image to
    ``[0, 1]`` between its minimum and its 99th percentile (clipped), averaged over SmoothGrad's 50
    noisy copies (noise standard deviation ``(0.05 / value range)**2``), min-max rescaled, Gaussian
    sigma 4; guided backpropagation changes the cloner's ReLUs only.
  - ``"raw"`` (this package's earlier maps): ``|gradient|`` averaged over 8 SmoothGrad copies (noise
    0.1), maximum over colour channels, Gaussian sigma 4, *no* per-image scaling, so that maps of
    different images stay comparable; guided backpropagation changes the ReLUs of both networks.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from anomalib_rdx.components.anomaly_map import SeparableGaussianBlur, upsample_bilinear
from anomalib_rdx.components.choices import check_choice
from anomalib_rdx.components.losses import pixel_cosine_distance_maps

GradientMethod = Literal["gradient", "smoothgrad", "guided"]
GradientRecipe = Literal["official", "raw"]
GRADIENT_METHODS = ("gradient", "smoothgrad", "guided")
GRADIENT_RECIPES = ("official", "raw")


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
        self.blur = SeparableGaussianBlur(sigma)

    def forward(self, expert: Sequence[torch.Tensor], cloner: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map ``(B, 1, H, W)``."""
        anomaly_map = torch.zeros(expert[0].shape[0], 1, *self.image_size, device=expert[0].device)
        for e, c in zip(expert, cloner, strict=True):
            layer_map = pixel_cosine_distance_maps(e, c)
            layer_map = layer_map + self.mse_weight * (e - c).pow(2).mean(dim=1, keepdim=True)
            anomaly_map = anomaly_map + upsample_bilinear(layer_map, self.image_size, align_corners=False)
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


def _scale_per_image(maps: torch.Tensor, upper_quantile: float) -> torch.Tensor:
    """Scale each ``(1, H, W)`` map of a batch to ``[0, 1]`` between its minimum and a quantile (clipped)."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1)
    high = flat.max(dim=1).values if upper_quantile >= 1 else torch.quantile(flat, upper_quantile, dim=1)
    scale = (high - low).clamp(min=torch.finfo(maps.dtype).tiny).view(-1, 1, 1, 1)
    return ((maps - low.view(-1, 1, 1, 1)) / scale).clamp(0, 1)


def _official_saliency(gradient: torch.Tensor) -> torch.Tensor:
    """Return the authors' greyscale saliency: channel sum of ``|gradient|``, scaled to its min and 99th percentile."""
    return _scale_per_image(gradient.abs().sum(dim=1, keepdim=True), upper_quantile=0.99)


def gradient_map(
    score: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    method: GradientMethod,
    guided_networks: Sequence[nn.Module],
    recipe: GradientRecipe = "official",
    sigma: float = 4.0,
) -> torch.Tensor:
    """Interpretability map of the per-image discrepancy ``score`` with respect to ``images``.

    Works inside ``torch.inference_mode`` (Lightning's evaluation loops): the gradient is taken on a
    clone of the images made with inference mode switched off.

    Args:
        score: Maps images ``(B, 3, H, W)`` to per-image discrepancies ``(B,)``.
        images: Input batch.
        method: ``"gradient"``, ``"smoothgrad"`` or ``"guided"``.
        guided_networks: Modules whose ReLUs guided backpropagation modifies.
        recipe: ``"official"`` or ``"raw"`` (see the module docstring).
        sigma: Gaussian smoothing of the map.

    Returns:
        Map ``(B, 1, H, W)``, finite and non-negative (in ``[0, 1]`` with the official recipe).
    """
    check_choice("method", method, GRADIENT_METHODS)
    check_choice("recipe", recipe, GRADIENT_RECIPES)
    official = recipe == "official"
    samples = 1 if method != "smoothgrad" else (50 if official else 8)
    undo = _guided_relu_hooks(guided_networks) if method == "guided" else []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inputs = images.detach().clone()
            if official:
                value_range = (inputs.flatten(1).amax(dim=1) - inputs.flatten(1).amin(dim=1)).clamp(min=1e-6)
                noise_std = ((0.05 / value_range) ** 2).view(-1, 1, 1, 1)
            else:
                noise_std = torch.full((len(inputs), 1, 1, 1), 0.1, device=inputs.device)
            total = torch.zeros(inputs.shape[0], 1 if official else 3, *inputs.shape[2:], device=inputs.device)
            for _ in range(samples):
                noisy = inputs + noise_std * torch.randn_like(inputs) if method == "smoothgrad" else inputs
                noisy = noisy.detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(score(noisy).sum(), noisy)
                total = total + (_official_saliency(gradient) if official else gradient.abs())
    finally:
        for restore in undo:
            restore()
    saliency = total / samples
    saliency = _scale_per_image(saliency, upper_quantile=1.0) if official else saliency.amax(dim=1, keepdim=True)
    return SeparableGaussianBlur(sigma).to(saliency.device)(saliency).detach()
