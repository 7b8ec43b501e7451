"""Small MVTec-layout subsets of a dataset, for quick runs, tests and the bundled sample."""

import shutil
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def _spread(items: list[Path], count: int | None) -> list[Path]:
    """``count`` items evenly spread over ``items`` (all of them when ``count`` is ``None``)."""
    if count is None or count >= len(items):
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def make_mvtec_subset(
    source: str | Path,
    destination: str | Path,
    train_good: int | None = None,
    test_good: int | None = None,
    test_per_defect: int | None = None,
) -> Path:
    """Write an MVTec-layout subset of ``source`` to ``destination``.

    Files are copied. Images are taken evenly spread over each sorted folder, so a subset covers the whole folder.
    Defect masks (``ground_truth/<defect>/<stem>_mask.png``) come along with their images. Splits are
    never mixed: train images stay in train, test images in test.

    Args:
        source: MVTec-layout dataset folder (``train/good``, ``test/<type>``, ``ground_truth/<type>``).
        destination: Folder to write; must not exist yet.
        train_good: Number of ``train/good`` images (all when ``None``).
        test_good: Number of ``test/good`` images (all when ``None``).
        test_per_defect: Number of images per defect type (all when ``None``).

    Returns:
        ``destination``.

    Raises:
        FileNotFoundError: If ``source`` has no ``train/good`` images.
        FileExistsError: If ``destination`` exists, so nothing already there is overwritten.
    """
    source, destination = Path(source), Path(destination)
    if not (source / "train" / "good").is_dir() or not _images(source / "train" / "good"):
        msg = f"'{source}' has no images in train/good: expected an MVTec-layout dataset folder."
        raise FileNotFoundError(msg)
    if destination.exists():
        msg = f"'{destination}' already exists; choose a new folder."
        raise FileExistsError(msg)

    def place(path: Path) -> None:
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # anomalib's MVTecAD scanner skips symlinks

    for path in _spread(_images(source / "train" / "good"), train_good):
        place(path)
    for folder in sorted(p for p in (source / "test").iterdir() if p.is_dir()):
        is_good = folder.name == "good"
        for path in _spread(_images(folder), test_good if is_good else test_per_defect):
            place(path)
            mask = source / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if not is_good and mask.is_file():
                place(mask)
    return destination
