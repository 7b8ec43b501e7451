"""Which expert layers MKD compares, and where (Salehi et al., CVPR 2021).

The authors' code compares VGG16's activations *after* the max-pooling that ends blocks 2-5, at strides
4, 8, 16 and 32 (at 128x128: 32x32 down to 4x4). timm's VGG feature levels sit *before* those pools
(levels 1-4 are the last ReLU of blocks 2-5, strides 2-16), so ``layer_positions="post_pool"`` applies
the same 2x2 max-pool to each compared level: for VGG this is exactly the output of the block's own
pooling layer.

Rule for ``layers=None``: the levels whose compared stride (the level's stride, doubled when
post-pooled) is 4, 8, 16 or 32. For VGG (post-pooled) these are levels 1-4, the paper's layers; for
ResNet, EfficientNet, MobileNet, ConvNeXt, DenseNet, ... (not pooled) the stage outputs at strides 4-32.
"""

from collections.abc import Sequence
from typing import Literal

from anomalib_rdx.components import BackboneError
from anomalib_rdx.components.backbone import feature_levels

LayerPositions = Literal["pre_pool", "post_pool"]
COMPARED_STRIDES = (4, 8, 16, 32)


def is_vgg(backbone: str) -> bool:
    """Whether ``backbone`` is a timm VGG (``vgg11`` ... ``vgg19_bn``), whose levels precede a max-pool."""
    return backbone.startswith("vgg")


def resolve_layer_positions(backbone: str, layer_positions: LayerPositions | None) -> LayerPositions:
    """``post_pool`` for VGG (the authors' code), ``pre_pool`` for other CNNs, unless given."""
    if layer_positions is None:
        return "post_pool" if is_vgg(backbone) else "pre_pool"
    if layer_positions not in {"pre_pool", "post_pool"}:
        msg = f"layer_positions must be 'pre_pool' or 'post_pool', got {layer_positions!r}."
        raise ValueError(msg)
    return layer_positions


def default_layers(backbone: str, layer_positions: LayerPositions) -> list[int]:
    """Feature levels of ``backbone`` compared at strides 4, 8, 16 and 32 (see the module docstring).

    Raises:
        BackboneError: If the backbone is no timm CNN or has fewer than two such levels.
    """
    factor = 2 if layer_positions == "post_pool" else 1
    reductions: Sequence[int] = [level["reduction"] for level in feature_levels(backbone)]
    layers = [index for index, reduction in enumerate(reductions) if reduction * factor in COMPARED_STRIDES]
    if len(layers) < 2:
        msg = (
            f"Backbone '{backbone}' has feature levels at strides {list(reductions)}: fewer than two of them are "
            f"compared at strides {list(COMPARED_STRIDES)} with layer_positions={layer_positions!r}. "
            "Give `layers` explicitly."
        )
        raise BackboneError(msg)
    return layers
