"""Check a dataset folder before anything runs: unreadable images, masks without images, mask sizes.

anomalib reads images lazily, inside data-loader workers, so a truncated file surfaces mid-training as
a decoder error without its path, or, with a synthetic validation split, while that split is made.
:func:`validate_datamodule` runs first (from the models' ``prepare_data`` hook, before any datamodule
setup, training or writing) and raises one :class:`DatasetError` that names every bad file:

- image files that cannot be decoded (corrupt or truncated);
- MVTec layout: masks in ``ground_truth/<defect>/`` with no image in ``test/<defect>/``;
- MVTec layout: masks whose size differs from their image's.

Images of 1 or 4 channels are fine: anomalib's ``read_image`` converts them to RGB.
"""

from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

MASK_SUFFIX = "_mask"
_MAX_LISTED = 10


class DatasetError(ValueError):
    """A dataset folder holds files that cannot be used; the message names them."""


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS)


def _decode_error(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def unreadable_images(paths: Iterable[Path]) -> list[str]:
    """``"<path> (<reason>)"`` for every file that does not decode as an image."""
    problems = []
    for path in paths:
        reason = _decode_error(path)
        if reason:
            problems.append(f"{path} ({reason})")
    return problems


def mvtec_mask_problems(category: Path) -> list[str]:
    """Masks without an image, and masks of another size than their image, in an MVTec-layout folder."""
    problems = []
    ground_truth = category / "ground_truth"
    if not ground_truth.is_dir():
        return problems
    for mask in _image_files(ground_truth):
        defect = mask.parent.name
        stem = mask.stem.removesuffix(MASK_SUFFIX)
        images = [
            path for path in (category / "test" / defect).glob(f"{stem}.*") if path.suffix.lower() in IMG_EXTENSIONS
        ]
        if not images:
            problems.append(f"{mask} (mask without an image: no test/{defect}/{stem}.* file)")
            continue
        if _decode_error(mask) or _decode_error(images[0]):
            continue  # reported as unreadable
        mask_size, image_size = _image_size(mask), _image_size(images[0])
        if mask_size != image_size:
            problems.append(
                f"{mask} (mask is {mask_size[0]}x{mask_size[1]}, its image {images[0].name} is "
                f"{image_size[0]}x{image_size[1]})"
            )
    return problems


def dataset_folders(datamodule: object) -> tuple[list[Path], Path | None]:
    """Folders a datamodule reads, and its MVTec-layout category folder if it has one."""
    root = getattr(datamodule, "root", None)
    if root is None:
        return [], None
    root = Path(root)
    category = getattr(datamodule, "category", None)
    if category is not None and (root / category).is_dir():
        return [root / category], root / category
    folders = []
    for attribute in ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir"):
        value = getattr(datamodule, attribute, None)
        for entry in [value] if isinstance(value, str | Path) else list(value or []):
            folder = Path(entry) if Path(entry).is_absolute() else root / entry
            if folder.is_dir():
                folders.append(folder)
    return folders, None


def validate_datamodule(datamodule: object) -> None:
    """Raise :class:`DatasetError` naming every unusable file of the datamodule's folders."""
    folders, category = dataset_folders(datamodule)
    problems = unreadable_images(path for folder in folders for path in _image_files(folder))
    if category is not None:
        problems += mvtec_mask_problems(category)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        msg = f"{len(problems)} unusable file(s) in {', '.join(map(str, folders))}:\n  {listed}{more}"
        raise DatasetError(msg)
