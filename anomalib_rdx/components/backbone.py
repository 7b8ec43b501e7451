"""Teacher backbones: any timm CNN, validated and wrapped in anomalib's ``TimmFeatureExtractor``.

Every model of the package reads its teacher (or expert) through :func:`build_feature_extractor`,
so layer validation, feature-pyramid metadata and weight loading behave the same everywhere.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor

from .weights import load_backbone_weights, resolve_weights_path

DEFAULT_STRIDES = (4, 8, 16)
"""Strides of the levels a model reads when no ``layers`` are given (ResNet's ``layer1``-``layer3``)."""


class BackboneError(ValueError):
    """Raised when a backbone or its layers cannot serve as a CNN feature pyramid."""


@dataclass(frozen=True)
class FeaturePyramid:
    """Channels and strides of the feature levels a teacher returns (shallow to deep).

    Attributes:
        indices: timm ``out_indices`` of the selected levels.
        names: Module names of the selected levels.
        channels: Channels of each level.
        reductions: Stride of each level relative to the input image.
    """

    indices: tuple[int, ...]
    names: tuple[str, ...]
    channels: tuple[int, ...]
    reductions: tuple[int, ...]

    @property
    def total_stride(self) -> int:
        """Stride of the deepest selected level."""
        return self.reductions[-1]


def describe_feature_pyramid(backbone: str, layers: Sequence[str | int]) -> FeaturePyramid:
    """Check that ``backbone`` is a timm CNN with the requested ``layers`` and describe them.

    Args:
        backbone: timm model name, e.g. ``"wide_resnet50_2"`` or ``"efficientnet_lite0"``.
        layers: Feature levels, as module names (``"layer1"``, ``"blocks.2"``) or as
            ``features_only`` indices (``1``, ``2``, ``3``).

    Returns:
        The selected levels' channels and strides, shallow to deep.

    Raises:
        BackboneError: If the name is unknown to timm, the model has no ``features_only``
            pyramid, a layer does not exist, or the levels are not strictly deeper one after
            another (as in a vision transformer, whose levels all share one stride).
    """
    if not layers:
        msg = f"`layers` is empty: give at least one feature level of backbone '{backbone}'."
        raise BackboneError(msg)
    info = feature_levels(backbone)
    names = [level["module"] for level in info]
    indices: list[int] = []
    for layer in layers:
        if isinstance(layer, int) and 0 <= layer < len(info):
            indices.append(layer)
        elif isinstance(layer, str) and layer in names:
            indices.append(names.index(layer))
        else:
            available = ", ".join(f"{i}:{name}" for i, name in enumerate(names))
            msg = f"Layer {layer!r} is not a feature level of backbone '{backbone}'. Available levels: {available}."
            raise BackboneError(msg)
    reductions = [info[i]["reduction"] for i in indices]
    if any(later <= earlier for earlier, later in pairwise(reductions)):
        msg = (
            f"Backbone '{backbone}' with layers {list(layers)} gives strides {reductions}: the levels must get "
            "strictly coarser for a student decoder to mirror them. Use a CNN (ResNet, EfficientNet, VGG, ...) "
            "and list its levels from shallow to deep."
        )
        raise BackboneError(msg)
    return FeaturePyramid(
        indices=tuple(indices),
        names=tuple(names[i] for i in indices),
        channels=tuple(info[i]["num_chs"] for i in indices),
        reductions=tuple(reductions),
    )


def feature_levels(backbone: str) -> list[dict]:
    """Levels (module, stride, channels) of ``backbone`` built by timm as a ``features_only`` network."""
    if not timm.is_model(backbone):
        msg = f"Backbone '{backbone}' is not a timm model name (see `timm.list_models()`)."
        raise BackboneError(msg)
    try:
        model = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except Exception as error:  # timm raises RuntimeError/ValueError/AssertionError here
        msg = f"Backbone '{backbone}' cannot be built as a timm `features_only` CNN: {error}"
        raise BackboneError(msg) from error
    return model.feature_info.info


def resolve_layers(
    backbone: str,
    layers: Sequence[str | int] | None,
    paper_layers: Mapping[str, Sequence[str | int]] | None = None,
    strides: Sequence[int] = DEFAULT_STRIDES,
) -> list[str | int]:
    """Feature levels a model reads: the given ``layers``, or a default that fits any CNN.

    With ``layers=None`` the paper's layers are used for the paper's backbone (``paper_layers`` maps
    backbone names to their layers, e.g. ``{"wide_resnet50_2": ("layer1", "layer2", "layer3")}``); for
    any other backbone, the levels of timm's ``feature_info`` at ``strides`` (default 4, 8 and 16, which
    are ``layer1``-``layer3`` of a ResNet), by module name. Where several levels share a stride, the
    deepest is taken: it is the output of that resolution's last block.

    Args:
        backbone: timm model name.
        layers: Explicit levels (module names or ``features_only`` indices), returned unchanged, or ``None``.
        paper_layers: The paper's layers per backbone name.
        strides: Strides of the default levels, shallow to deep.

    Returns:
        The levels, shallow to deep.

    Raises:
        BackboneError: If ``layers`` is ``None`` and ``backbone`` is unknown to timm, has no
            ``features_only`` pyramid, or has no level at one of ``strides`` (e.g. a vision transformer,
            whose levels all have stride 16).
    """
    if layers is not None:
        return list(layers)
    if paper_layers and backbone in paper_layers:
        return list(paper_layers[backbone])
    info = feature_levels(backbone)
    deepest_at_stride = {level["reduction"]: level["module"] for level in info}
    missing = [stride for stride in strides if stride not in deepest_at_stride]
    if missing:
        available = ", ".join(f"{i}:{level['module']} (stride {level['reduction']})" for i, level in enumerate(info))
        msg = (
            f"Backbone '{backbone}' has no feature level at strides {', '.join(map(str, missing))}, so no default "
            f"layers (strides {', '.join(map(str, strides))}) can be chosen: pass `layers` explicitly. "
            f"Its levels: {available}."
        )
        raise BackboneError(msg)
    return [deepest_at_stride[stride] for stride in strides]


def build_feature_extractor(
    backbone: str,
    layers: Sequence[str | int],
    pre_trained: bool = True,
    backbone_weights: str | Path | None = None,
    requires_grad: bool = False,
) -> tuple[TimmFeatureExtractor, FeaturePyramid]:
    """Build a teacher as anomalib's ``TimmFeatureExtractor`` with validated layers and weights.

    Args:
        backbone: timm model name.
        layers: Feature levels (names or ``features_only`` indices), shallow to deep.
        pre_trained: Load timm's pretrained weights (download) when no ``backbone_weights`` is given.
        backbone_weights: Local weights file, or the name of an installed weights package
            (see :func:`anomalib_rdx.components.weights.resolve_weights_path`). Takes precedence over
            ``pre_trained``.
        requires_grad: Whether the extractor is trainable (RD with Expert's teacher) or frozen.

    Returns:
        The feature extractor and the description of its feature pyramid.
    """
    pyramid = describe_feature_pyramid(backbone, layers)
    download = pre_trained and backbone_weights is None
    try:
        extractor = TimmFeatureExtractor(
            backbone=backbone,
            layers=list(pyramid.indices),
            pre_trained=download,
            requires_grad=requires_grad,
        )
    except Exception as error:
        if not download:
            raise
        msg = (
            f"Could not fetch timm's pretrained weights for backbone '{backbone}' ({error}). Offline, pass a local "
            "weights file with `backbone_weights=...`, or `pre_trained=False` to start from random weights."
        )
        raise RuntimeError(msg) from error
    # Dropped first, so a weights file needs only the kept blocks: the package's own teacher saved alone
    # loads, and a whole network's file still does (its later tensors are left over, as a classifier's are).
    drop_unused_blocks(extractor.feature_extractor)
    if backbone_weights is not None:
        load_backbone_weights(extractor.feature_extractor, resolve_weights_path(backbone_weights), backbone)
    set_trainable(extractor, trainable=requires_grad)
    return extractor, pyramid


def drop_unused_blocks(network: torch.nn.Module) -> int:
    """Remove the blocks of a timm EfficientNet/MobileNet feature network that lie past its deepest level.

    timm's ``features_only`` EfficientNet and MobileNetV3 (``EfficientNetFeatures``,
    ``MobileNetV3Features``) run every block and keep the outputs of the requested levels, so with the
    package's strides 4/8/16 an efficientnet_lite0 teacher computes its two stride-32 stages for nothing
    (every training and inference pass: 5 of its 7 stages are read). Other timm feature networks
    (``FeatureListNet`` for ResNets, VGG, ...) already stop at the deepest requested module and are left
    alone, as are networks that collect their features through hooks.

    The returned features are unchanged (the dropped blocks come after the last one read). A state dict
    saved before the blocks were dropped still loads: their keys are skipped (:class:`SkipDroppedBlocks`).

    Args:
        network: timm ``features_only`` network (``TimmFeatureExtractor.feature_extractor``).

    Returns:
        How many blocks were dropped.
    """
    stage_outputs = getattr(network, "_stage_out_idx", None)
    blocks = getattr(network, "blocks", None)
    if not stage_outputs or not isinstance(blocks, torch.nn.Sequential) or getattr(network, "feature_hooks", None):
        return 0
    kept = max(stage_outputs)  # the forward reads stage i + 1 after block i; stage 0 is the stem
    dropped = len(blocks) - kept
    if dropped > 0:
        network.blocks = blocks[:kept]
        network.register_load_state_dict_pre_hook(SkipDroppedBlocks(kept))
    return max(dropped, 0)


class SkipDroppedBlocks:
    """Load-state-dict pre-hook: skip the keys of the blocks that :func:`drop_unused_blocks` removed.

    Checkpoints of the package made before those blocks were dropped hold their (unused) weights.

    Args:
        kept: Number of blocks the network still has; keys of ``blocks.<i>`` with ``i >= kept`` are skipped.
    """

    def __init__(self, kept: int) -> None:
        self.kept = kept

    def __call__(self, module: torch.nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        """Delete the dropped blocks' entries under ``prefix`` from ``state_dict``."""
        del module, args
        blocks = f"{prefix}blocks."
        for key in [key for key in state_dict if key.startswith(blocks)]:
            index = key[len(blocks) :].split(".", 1)[0]
            if index.isdigit() and int(index) >= self.kept:
                del state_dict[key]


def set_trainable(module: torch.nn.Module, trainable: bool) -> None:
    """Switch gradients of every parameter of ``module`` on or off."""
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
