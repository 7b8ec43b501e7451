"""Anomaly maps standardised by the distance to the image border, with statistics of normal images.

A reverse-distillation map falls off towards the image border: the teacher's features there see the
convolutions' zero padding in every training image, and the student learns to reproduce them. On the
normal magnetic_tile validation images of the bundled main job the mean map value is 1.22 at the border
and 2.0 in the centre, so a defect at a tile edge (``fray``, ``break``) has to be much more unusual than one
in the middle to reach the same heat. Mirroring the border at inference (``border_padding``) flattens the
fall-off but raises the good parts' border pixels above their centre (measured: it cost image AUROC on the
test images).

:class:`BorderCalibration` instead measures the fall-off on the held-out **normal** validation images: the
mean and standard deviation of the map at every distance ``d`` from the nearest border (``d`` capped at
``max_distance``; the interior is one group), and serves ``(map - mean[d]) / std[d]``: each pixel in units
of how normal pixels at its distance vary. The statistics are fitted again at the start of every
validation epoch (:meth:`DistillationModule.on_validation_epoch_start`), from the same network, so the
validation maps, the thresholds and the scale fitted on them all read the calibrated map; the image
score is computed from the calibrated map. Two numbers per distance are fitted, so 10-40 normal images
are enough; the correction is part of the exported graph (two constant vectors and a gather).
"""

import torch
from torch import nn

MAX_DISTANCE = 48
"""Distances from the border at and beyond which the map is treated as interior (pixels of the map)."""


def border_distance(height: int, width: int, max_distance: int, device: torch.device | None = None) -> torch.Tensor:
    """Distance in pixels ``(H, W)`` from every pixel to the nearest image border, capped at ``max_distance``."""
    rows = torch.arange(height, device=device).view(-1, 1)
    columns = torch.arange(width, device=device).view(1, -1)
    distance = torch.minimum(torch.minimum(rows, height - 1 - rows), torch.minimum(columns, width - 1 - columns))
    return distance.clamp(max=max_distance)


class BorderCalibration(nn.Module):
    """Standardise anomaly maps per distance to the image border with normal images' statistics.

    The identity (mean 0, deviation 1 at every distance) until :meth:`finish_fit` has stored statistics,
    and whenever ``enabled`` is false (the papers' maps). Unfitted buffers are finite, so state dicts of
    models with the switch compare equal with ``torch.equal`` (resume and seed checks).

    Args:
        enabled: Calibrate the maps once fitted.
        max_distance: Distance from the border from which pixels form one interior group.
    """

    def __init__(self, enabled: bool = False, max_distance: int = MAX_DISTANCE) -> None:
        super().__init__()
        if int(max_distance) != max_distance or max_distance < 1:
            msg = f"max_distance must be a positive integer, got {max_distance!r}."
            raise ValueError(msg)
        self.max_distance = int(max_distance)
        # The switch travels with the weights: a checkpoint whose thresholds were fitted on calibrated maps
        # serves calibrated maps also when loaded into a model built without the switch (e.g. `anomalib
        # export --ckpt_path` with other command-line arguments). forward reads the Python attribute.
        self.register_buffer("switched_on", torch.tensor(bool(enabled)))
        self.switched_on: torch.Tensor
        self.enabled = bool(enabled)
        self.register_buffer("mean", torch.zeros(self.max_distance + 1))
        self.register_buffer("std", torch.ones(self.max_distance + 1))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self._sums: torch.Tensor | None = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        """Take the switch from the checkpoint; load checkpoints from before the calibration as not fitted."""
        state_dict.setdefault(prefix + "mean", torch.zeros_like(self.mean))
        state_dict.setdefault(prefix + "std", torch.ones_like(self.std))
        state_dict.setdefault(prefix + "switched_on", self.switched_on.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.enabled = bool(self.switched_on)

    def switch(self, on: bool) -> None:
        """Turn the calibration on or off (kept in the state dict)."""
        self.enabled = bool(on)
        self.switched_on.fill_(self.enabled)

    @property
    def fitted(self) -> bool:
        """Whether normal statistics are stored (else the calibration is the identity).

        Read from the buffers, never cached: forward does not branch on it (an export traces the same
        graph whatever path loaded the weights).
        """
        return not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Calibrated maps ``(B, 1, H, W)``; the input unchanged when disabled (and in value when not fitted)."""
        if not self.enabled:
            return anomaly_map
        distance = border_distance(*anomaly_map.shape[-2:], self.max_distance, anomaly_map.device)
        return (anomaly_map - self.mean[distance]) / self.std[distance]

    def start_fit(self) -> None:
        """Reset to the identity and start collecting normal maps (:meth:`observe`): they are served raw."""
        self.mean.zero_()
        self.std.fill_(1.0)
        self._sums = torch.zeros(3, self.max_distance + 1, dtype=torch.float64, device=self.mean.device)

    def observe(self, normal_maps: torch.Tensor) -> None:
        """Add raw maps ``(B, 1, H, W)`` of normal images to the statistics being collected."""
        if self._sums is None:
            msg = "BorderCalibration.observe needs start_fit first."
            raise RuntimeError(msg)
        if normal_maps.numel() == 0:
            return
        values = normal_maps.detach().to(torch.float64).flatten(0, -3)  # (N, H, W)
        distance = border_distance(*values.shape[-2:], self.max_distance, values.device).expand_as(values)
        index = distance.flatten()
        flat = values.flatten()
        self._sums[0].index_add_(0, index, torch.ones_like(flat))
        self._sums[1].index_add_(0, index, flat)
        self._sums[2].index_add_(0, index, flat * flat)

    def finish_fit(self) -> None:
        """Store per-distance mean and standard deviation of the observed maps.

        Raises:
            ValueError: When no normal pixel was observed at some distance (no normal validation image).
        """
        sums, self._sums = self._sums, None
        if sums is None or bool((sums[0] < 2).any()):
            msg = (
                "border_calibration needs normal images in the validation split (none were seen): use "
                "val_split_mode 'synthetic' or 'from_train', or set border_calibration false."
            )
            raise ValueError(msg)
        count, total, squares = sums
        mean = total / count
        variance = (squares - count * mean * mean) / (count - 1)
        std = variance.clamp(min=0).sqrt().clamp(min=1e-6 * float(mean.abs().max()) + 1e-12)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
