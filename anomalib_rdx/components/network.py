"""The torch-model shell every detector of the package shares.

A model of the package takes images in ``[0, 1]`` (its pre-processor only resizes; synthetic anomalies
and augmentations are made on ``[0, 1]`` images) and returns its training features in training mode and
anomalib's ``InferenceBatch`` in evaluation mode. What is the same for every model lives here, once:

- ImageNet normalisation for the pretrained teacher (part of the exported graph);
- anomalib's tiling: ``TilerConfigurationCallback`` sets ``tiler``; images are cut into tiles in
  training and evaluation (:meth:`DistillationNetwork.tile`), and in evaluation the feature maps are put
  back together before the anomaly map is computed, as anomalib's stock ReverseDistillation does;
- the image score computed from the anomaly map (:func:`image_score_from_map`);
- optional border handling at inference (``border_padding``): the image is extended by mirroring its
  outer ``border_padding`` pixels, the map is computed on the larger image and cropped back. Teacher
  features at an image border see the convolutions' zero padding and are reproduced easily by the
  student, so plain maps fall off towards the border (on normal magnetic_tile validation images, 0.61
  within 8 px of the border against 0.89 in the centre), where edge defects (``fray``, ``break``) lie;
- optional calibration of that fall-off (``border_calibration``): the map standardised per distance to
  the border with statistics of the normal validation images (:mod:`.border_calibration`), before the
  image score is read from it;
- optional test-time flips (``test_time_flips``): the map is computed on the image and on its mirror
  images, flipped back and averaged, so a hot spot has to appear in every view to stay hot (none of the
  papers does this; their single view is the default). By default (``flip_scope="map"``) only the served
  map is averaged and the image score is still read from the image's own map: on the visible synthetic
  validation split of magnetic_tile the averaged map localised better for all four RD-family models and
  scored images worse for three of them (top-level README, "Test-time flips").

A model writes only :meth:`DistillationNetwork.features` and :meth:`DistillationNetwork.anomaly_map` (and
:meth:`DistillationNetwork.image_score_of` when its score is not read from the map).
"""

from typing import Any, Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import Tiler
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .border_calibration import BorderCalibration
from .choices import check_choice
from .normalization import ImageNetNormalization

ImageScore = Literal["max", "top_k_mean"]
IMAGE_SCORES = ("max", "top_k_mean")
TestTimeFlips = Literal["none", "horizontal", "vertical", "all"]
FlipScope = Literal["map", "map_and_score"]
FLIP_SCOPES = ("map", "map_and_score")
FLIP_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "horizontal": ((), (-1,)),
    "vertical": ((), (-2,)),
    "all": ((), (-1,), (-2,), (-2, -1)),
}
"""Dimensions each view flips, per ``test_time_flips`` setting (the first view is the image itself)."""


def image_score_from_map(
    anomaly_map: torch.Tensor, mode: ImageScore = "max", top_k_share: float = 0.01
) -> torch.Tensor:
    """Image score ``(B, 1)`` of each map ``(B, 1, H, W)``: its maximum, or the mean of its top ``top_k_share`` pixels.

    The maximum is the papers' score; it rests on one pixel, so a single bright spot of texture decides
    the label. The mean of the top 1% of pixels (655 pixels at 256x256) needs a region to be unusual.
    """
    flat = anomaly_map.flatten(2)  # (B, 1, H*W): scores keep anomalib's (B, 1) shape, as its RD's amax does
    if mode == "max":
        return flat.amax(dim=-1)
    k = max(1, round(top_k_share * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(dim=-1)


def map_features(function: Any, features: Any) -> Any:
    """Apply ``function`` to every tensor of a nested list/tuple of feature maps, keeping the structure."""
    if isinstance(features, torch.Tensor):
        return function(features)
    return type(features)(map_features(function, item) for item in features)


class DistillationNetwork(nn.Module):
    """Base of the package's torch models: normalisation, tiling and the ``InferenceBatch`` output.

    Args:
        input_size: Image size ``(H, W)`` the network is fed.
        image_score: Image score from the anomaly map: ``"max"`` (the papers') or ``"top_k_mean"``.
        top_k_share: Share of the map's pixels averaged by ``"top_k_mean"``.
        border_padding: Pixels mirrored around the image at inference (0: none, the papers'). The padded
            size must still fit the network's strides (a multiple of 16 does for strides up to 16).
        border_calibration: Standardise the map per distance to the image border with the normal
            validation images' statistics (:class:`BorderCalibration`; false: the papers' map).
        test_time_flips: Average the maps of the image and its mirror images at inference: ``"none"``
            (the papers'), ``"horizontal"``, ``"vertical"`` (two views) or ``"all"`` (four views). Costs
            one network pass per view. For models whose image score is read from the map.
        flip_scope: What the flips change: ``"map"`` (the served map; the image score stays that of the
            image itself, calibrated like the map) or ``"map_and_score"`` (the score is read from the
            averaged map too).
        map_sigma: Standard deviation in pixels of the Gaussian that smooths the anomaly map (4, the
            papers' and anomalib's); the image score is read from the smoothed map.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        image_score: ImageScore = "max",
        top_k_share: float = 0.01,
        border_padding: int = 0,
        border_calibration: bool = False,
        test_time_flips: TestTimeFlips = "none",
        flip_scope: FlipScope = "map",
        map_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if not map_sigma > 0:
            msg = f"map_sigma must be a positive number of pixels, got {map_sigma}."
            raise ValueError(msg)
        if border_padding < 0 or border_padding >= min(input_size):
            msg = f"border_padding must be in [0, {min(input_size)}) for {tuple(input_size)} images: {border_padding}."
            raise ValueError(msg)
        check_choice("image_score", image_score, IMAGE_SCORES)
        if not 0 < top_k_share <= 1:
            msg = f"top_k_share must be in (0, 1], got {top_k_share}."
            raise ValueError(msg)
        check_choice("test_time_flips", test_time_flips, FLIP_VIEWS)
        check_choice("flip_scope", flip_scope, FLIP_SCOPES)
        self.test_time_flips = test_time_flips
        self.flip_scope = flip_scope
        self.map_sigma = float(map_sigma)
        self.image_score = image_score
        self.top_k_share = top_k_share
        self.border_padding = border_padding
        self.input_size = tuple(input_size)
        self.map_size = tuple(side + 2 * border_padding for side in input_size)
        """Size of the images the anomaly map is computed on: the input size plus the border padding."""
        self.normalize = ImageNetNormalization()
        self.border_calibration = BorderCalibration(enabled=border_calibration)
        self.score_calibration = BorderCalibration(enabled=True)
        """Border statistics of the image's own (unflipped) map, which the image score reads under
        ``flip_scope="map"`` with the border calibration on: the averaged map the border calibration
        standardises varies less than one view. Fitted beside it; applied only while it is on."""
        self.tiler: Tiler | None = None  # set by anomalib's TilerConfigurationCallback

    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """Tiles of ``images`` (batch-major) when a tiler is set, else ``images``."""
        return images if self.tiler is None else self.tiler.tile(images)

    def untile(self, features: Any) -> Any:
        """Whole-image feature maps from per-tile ones (every tensor of a nested structure)."""
        return features if self.tiler is None else map_features(self.tiler.untile, features)

    def features(self, images: torch.Tensor) -> Any:
        """Features of normalised images: the training output, and the input of :meth:`anomaly_map`."""
        raise NotImplementedError

    def anomaly_map(self, features: Any) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)`` at :attr:`map_size` from whole-image features."""
        raise NotImplementedError

    def image_score_of(self, features: Any, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image score: from the map (``image_score``); a model with a score of its own overrides this."""
        del features
        return image_score_from_map(anomaly_map, self.image_score, self.top_k_share)

    def pad_border(self, images: torch.Tensor) -> torch.Tensor:
        """Mirror ``border_padding`` pixels around ``[0, 1]`` images (inference only)."""
        if self.border_padding == 0:
            return images
        if self.tiler is not None:
            msg = "border_padding pads whole images; it cannot be combined with anomalib's tiler."
            raise ValueError(msg)
        return F.pad(images, [self.border_padding] * 4, mode="reflect")

    def crop_border(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Cut the padded border off a map computed on :meth:`pad_border` images."""
        pad = self.border_padding
        return anomaly_map if pad == 0 else anomaly_map[..., pad:-pad, pad:-pad]

    def flip_views(self, images: torch.Tensor) -> torch.Tensor:
        """Stack the images and their mirror images (``test_time_flips``) along the batch, view-major."""
        views = FLIP_VIEWS[self.test_time_flips]
        if len(views) == 1:
            return images
        return torch.cat([images.flip(dims) if dims else images for dims in views])

    def average_views(self, maps: torch.Tensor) -> torch.Tensor:
        """Mean of the per-view maps of :meth:`flip_views`, each flipped back first."""
        views = FLIP_VIEWS[self.test_time_flips]
        if len(views) == 1:
            return maps
        per_view = maps.unflatten(0, (len(views), -1))  # (views, B, ...): keeps the batch size symbolic in an export
        return torch.stack(
            [per_view[index].flip(dims) if dims else per_view[index] for index, dims in enumerate(views)]
        ).mean(dim=0)

    @property
    def scores_own_view(self) -> bool:
        """Whether the image score is read from the image's own map while the served map averages flips."""
        return self.flip_scope == "map" and len(FLIP_VIEWS[self.test_time_flips]) > 1

    def own_view(self, view_maps: torch.Tensor) -> torch.Tensor:
        """Pick the maps of the unflipped images out of per-view maps (view-major, as :meth:`flip_views`)."""
        return view_maps.unflatten(0, (len(FLIP_VIEWS[self.test_time_flips]), -1))[0]

    def maps_of_views(self, images: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Whole-image features and raw maps ``(views x B, 1, H, W)`` of ``[0, 1]`` images and their mirror images."""
        views = self.tile(self.flip_views(images))
        features = self.untile(self.features(self.normalize(self.pad_border(views))))
        return features, self.crop_border(self.anomaly_map(features))

    def forward(self, images: torch.Tensor) -> Any:
        """Features of ``[0, 1]`` images in training; anomalib's ``InferenceBatch`` in evaluation."""
        if self.training:
            return self.features(self.normalize(self.tile(images)))
        features, view_maps = self.maps_of_views(images)
        anomaly_map = self.border_calibration(self.average_views(view_maps))
        score_map = anomaly_map
        if self.scores_own_view:
            score_map = self.own_view(view_maps)
            score_map = self.score_calibration(score_map) if self.border_calibration.enabled else score_map
        return InferenceBatch(pred_score=self.image_score_of(features, score_map), anomaly_map=anomaly_map)
