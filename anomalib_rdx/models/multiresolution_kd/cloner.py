"""The cloner of MKD (Salehi et al., CVPR 2021): a smaller network of the expert's family.

The paper's cloner is VGG16 with fewer channels in the intermediate convolutions and the expert's
channels at the compared layers. For any timm CNN expert, :class:`Cloner` is built from the expert's
``feature_info``: one VGG-style stage per compared level, reaching that level's stride with blocks of
``convs_per_step`` 3x3 convolutions (the first strided) of ``channels // width_divisor`` channels (at
least 8), and ending in a linear 1x1 convolution to the level's channels (expert levels such as
EfficientNet's are signed). It is trained from scratch.
"""

import math

import torch
from torch import nn

from anomalib_rdx.components import BackboneError, FeaturePyramid
from anomalib_rdx.components.decoder import conv_bn_relu


class Cloner(nn.Module):
    """Narrow VGG-style network reproducing the expert's activations at the compared levels.

    Args:
        pyramid: The expert's compared levels (channels and strides), shallow to deep.
        width_divisor: How much narrower the intermediate convolutions are than the level they lead to.
        convs_per_step: 3x3 convolutions per halving of the resolution (VGG blocks have 2-3).
    """

    def __init__(self, pyramid: FeaturePyramid, width_divisor: int = 2, convs_per_step: int = 2) -> None:
        super().__init__()
        if width_divisor < 1:
            msg = f"width_divisor must be at least 1, got {width_divisor}."
            raise ValueError(msg)
        if convs_per_step < 1:
            msg = f"convs_per_step must be at least 1, got {convs_per_step}."
            raise ValueError(msg)
        stages = []
        in_channels, stride = 3, 1
        for channels, reduction in zip(pyramid.channels, pyramid.reductions, strict=True):
            steps = round(math.log2(reduction // stride)) if reduction >= stride else -1
            if steps < 0 or 2**steps * stride != reduction:
                msg = f"Cloner: stride {reduction} does not follow {stride} by a power of two."
                raise BackboneError(msg)
            width = max(8, channels // width_divisor)
            layers: list[nn.Module] = []
            for _ in range(steps):
                layers.append(conv_bn_relu(in_channels, width, stride=2))
                layers.extend(conv_bn_relu(width, width) for _ in range(convs_per_step - 1))
                in_channels = width
            layers.append(conv_bn_relu(in_channels, width))
            layers.append(nn.Conv2d(width, channels, kernel_size=1))
            stages.append(nn.Sequential(*layers))
            in_channels, stride = channels, reduction
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations at the compared levels, shallow to deep."""
        outputs = []
        feature = images
        for stage in self.stages:
            feature = stage(feature)
            outputs.append(feature)
        return outputs
