"""Student bottleneck and decoder that mirror a teacher's feature pyramid.

Reverse distillation needs a student decoder that reproduces the teacher's multi-scale features.
For ResNet teachers read at ``layer1``-``layer3`` the student is anomalib's own mirrored ResNet
decoder and one-class bottleneck (``get_decoder`` / ``get_bottleneck_layer``). For every other CNN
(EfficientNet, MobileNet, VGG, ...) :class:`PyramidBottleneck` and :class:`PyramidDecoder` build the
same structure from the encoder's ``feature_info`` (channels and strides), using anomalib's decoder
blocks.

Both kinds expose their decoder as :class:`StagedDecoder`: a list of stages from deep to shallow, so
models that inject information between stages (RD with Expert's Guided Information Injection) can
run them one at a time.
"""

import math
from collections.abc import Sequence

import torch
from anomalib.models.components.backbone import get_decoder
from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock
from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
from torch import nn
from torchvision.models.resnet import BasicBlock

from .backbone import BackboneError, FeaturePyramid

RESNET_LEVELS = ("layer1", "layer2", "layer3")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Convolution (same padding, no bias), batch norm and ReLU: the block the students are made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _halvings(ratio: int, what: str) -> int:
    """Count the factor-2 steps in ``ratio``; the pyramid's strides must differ by powers of two."""
    steps = round(math.log2(ratio)) if ratio > 0 else -1
    if steps < 0 or 2**steps != ratio:
        msg = f"{what}: stride ratio {ratio} is not a power of two, so the student cannot mirror it."
        raise BackboneError(msg)
    return steps


class PyramidBottleneck(nn.Module):
    """One-class bottleneck embedding (Deng & Li, CVPR 2022) for any feature pyramid.

    Every level is brought to the deepest level's resolution by strided 3x3 convolutions, the levels
    are concatenated (multi-scale feature fusion) and a strided residual block compresses them into
    the one-class embedding at twice the deepest stride.

    Args:
        channels: Channels of the teacher levels, shallow to deep.
        reductions: Strides of the teacher levels, shallow to deep.
        embedding_channels: Channels of the embedding. Defaults to twice the deepest level's.
    """

    def __init__(
        self, channels: Sequence[int], reductions: Sequence[int], embedding_channels: int | None = None
    ) -> None:
        super().__init__()
        deepest = channels[-1]
        self.embedding_channels = embedding_channels or 2 * deepest
        self.align = nn.ModuleList()
        for level_channels, reduction in zip(channels, reductions, strict=True):
            steps = _halvings(reductions[-1] // reduction, "PyramidBottleneck")
            widths = [level_channels] + [deepest] * steps
            self.align.append(
                nn.Sequential(*[conv_bn_relu(widths[i], widths[i + 1], stride=2) for i in range(steps)]),
            )
        fused = deepest * len(channels)
        self.embed = BasicBlock(
            fused,
            self.embedding_channels,
            stride=2,
            downsample=nn.Sequential(
                nn.Conv2d(fused, self.embedding_channels, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(self.embedding_channels),
            ),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse the teacher levels into the one-class embedding."""
        aligned = [align(feature) for align, feature in zip(self.align, features, strict=True)]
        return self.embed(torch.cat(aligned, dim=1))


def _upsampling_stage(in_channels: int, out_channels: int, factor_steps: int) -> nn.Sequential:
    """Build a stage of anomalib's ``DecoderBasicBlock``: ``factor_steps`` 2x upsamplings, a refinement.

    The stage ends in a linear 1x1 convolution: ``DecoderBasicBlock`` ends in a ReLU, which suits
    ResNet levels (post-ReLU, non-negative) but could never reproduce the signed outputs of the linear
    bottlenecks that end EfficientNet and MobileNet levels.
    """
    blocks: list[nn.Module] = []
    width = in_channels
    for _ in range(factor_steps):
        upsample = nn.Sequential(
            nn.ConvTranspose2d(width, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        blocks.append(DecoderBasicBlock(width, out_channels, stride=2, upsample=upsample))
        width = out_channels
    if width != out_channels:  # same resolution, new width
        project = nn.Sequential(nn.Conv2d(width, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels))
        blocks.append(DecoderBasicBlock(width, out_channels, upsample=project))
    blocks.append(DecoderBasicBlock(out_channels, out_channels))
    blocks.append(nn.Conv2d(out_channels, out_channels, kernel_size=1))
    return nn.Sequential(*blocks)


class StagedDecoder(nn.Module):
    """Student decoder as a list of stages, deep to shallow.

    Stage ``k`` produces the reconstruction of teacher level ``n - 1 - k``. :meth:`forward` runs them
    in sequence and returns the reconstructions shallow to deep, like the teacher's features.

    Args:
        stages: Decoder stages, deep to shallow.
    """

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Decode the embedding into features, shallow to deep."""
        outputs = []
        feature = embedding
        for stage in self.stages:
            feature = stage(feature)
            outputs.append(feature)
        return outputs[::-1]


class PyramidDecoder(StagedDecoder):
    """Student decoder mirroring any CNN pyramid, built from its ``feature_info``.

    Args:
        channels: Channels of the teacher levels, shallow to deep.
        reductions: Strides of the teacher levels, shallow to deep.
        embedding_channels: Channels of the bottleneck embedding (at twice the deepest stride).
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], embedding_channels: int) -> None:
        widths = [embedding_channels, *channels[::-1]]
        strides = [2 * reductions[-1], *reductions[::-1]]
        stages = [
            _upsampling_stage(widths[i], widths[i + 1], _halvings(strides[i] // strides[i + 1], "PyramidDecoder"))
            for i in range(len(channels))
        ]
        super().__init__(stages)


def build_student(backbone: str, pyramid: FeaturePyramid) -> tuple[nn.Module, StagedDecoder]:
    """Build the one-class bottleneck and the staged student decoder for a teacher.

    ResNet teachers read at ``layer1``-``layer3`` get anomalib's mirrored ResNet decoder and OCBE, as in
    stock ``ReverseDistillation``; any other CNN gets :class:`PyramidBottleneck` and :class:`PyramidDecoder`.

    Args:
        backbone: timm name of the teacher.
        pyramid: The teacher's selected levels.

    Returns:
        ``(bottleneck, decoder)``.
    """
    if pyramid.names == RESNET_LEVELS:
        try:
            resnet_decoder = get_decoder(backbone)
        except ValueError:
            resnet_decoder = None
        if resnet_decoder is not None:
            stages = [resnet_decoder.layer1, resnet_decoder.layer2, resnet_decoder.layer3]
            return get_bottleneck_layer(backbone), StagedDecoder(stages)
    bottleneck = PyramidBottleneck(pyramid.channels, pyramid.reductions)
    return bottleneck, PyramidDecoder(pyramid.channels, pyramid.reductions, bottleneck.embedding_channels)


def check_input_size(
    input_size: Sequence[int],
    pyramid: FeaturePyramid,
    backbone: str,
    argument: str = "image size",
) -> None:
    """Raise if ``input_size`` cannot pass through the teacher and the bottleneck without rounding.

    The bottleneck halves the deepest level once more, so both sides must be multiples of twice the
    deepest stride. ``argument`` names what set the size (the image size, or ``border_padding``).
    """
    stride = 2 * pyramid.total_stride
    if any(side < stride or side % stride for side in input_size):
        if argument != "image size":
            msg = (
                f"{argument} makes the image {tuple(input_size)}, which does not fit backbone '{backbone}' with "
                f"levels {list(pyramid.names)}: each side must be a multiple of {stride}; choose {argument} so "
                f"that 2 * {argument} is a multiple of {stride}."
            )
            raise ValueError(msg)
        msg = (
            f"Image size {tuple(input_size)} does not fit backbone '{backbone}' with levels {list(pyramid.names)}: "
            f"each side must be a multiple of {stride} (twice the deepest stride). Set the pre-processor's resize, "
            f"e.g. image_size=({max(stride, 256)}, {max(stride, 256)})."
        )
        raise ValueError(msg)
