"""anomalib's tiling (``Tiler``) for the package's models.

anomalib's ``TilerConfigurationCallback`` (``--trainer.callbacks`` or ``Engine(callbacks=[...])``) sets a
``Tiler`` on ``model.model.tiler``. The package's networks then work as anomalib's stock
ReverseDistillation does: in evaluation the image is cut into tiles, the networks run on the tiles,
their feature maps are put back together (``Tiler.untile``), and the anomaly map and score are
computed on the re-assembled features, at the full input size. In training,
:class:`~anomalib_rdx.components.base.DistillationModule` cuts each batch into tiles before the training
step, so the networks learn at the scale they see in evaluation.
"""

from collections.abc import Sequence

import torch
from anomalib.data.utils.tiler import Tiler


def tile_images(tiler: Tiler | None, images: torch.Tensor) -> torch.Tensor:
    """Tiles of ``images`` (batch-major), or ``images`` when there is no tiler."""
    return images if tiler is None else tiler.tile(images)


def untile_features(tiler: Tiler | None, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Re-assemble per-tile feature maps into whole-image feature maps (unchanged without a tiler)."""
    return list(features) if tiler is None else [tiler.untile(feature) for feature in features]
