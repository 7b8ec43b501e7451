"""Accept/reject decisions and calibrated scores learnt from held-out normal images only.

anomalib's default :class:`~anomalib.post_processing.PostProcessor` places the image threshold where the
F1 score is best on the validation split and min-max normalises around it. With a synthetic validation
split (held-out training images, half with synthetic anomalies) that threshold follows the synthetic
anomalies, which need not resemble the real defects: on magnetic_tile it flags nearly every good part.

:class:`NormalQuantilePostProcessor` reads the *normal* validation images instead. It keeps their image
scores and a bounded sample of their anomaly-map pixels, and then

- normalises a score to its quantile among the held-out normal scores (0.5: as unusual as the median
  good part, for every model), and an anomaly map pixel to its quantile among the maxima of the normal
  maps (0.5: as hot as the hottest pixel of the median good part), so a heat map of a good part stays
  low except its hottest spot and a defect hotter than every good part approaches 1;
- sets the image threshold so that a chosen share of good parts is rejected (``false_reject_rate``), or
  keeps anomalib's F1-adaptive rule on the synthetic anomalies (``threshold="f1_adaptive"``).

Both the normalisation and the thresholds are buffers used by :meth:`forward`, so the model exported
with ``Engine.export`` (ONNX/OpenVINO) carries them; the graph uses comparisons, clamps, exponentials and
sums only.
"""

import logging
import math
from typing import Any, Literal

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer

from .choices import check_choice

logger = logging.getLogger(__name__)

ThresholdRule = Literal["false_reject_rate", "f1_adaptive"]
THRESHOLD_RULES = ("false_reject_rate", "f1_adaptive")
MapScale = Literal["normal_maxima", "normal_pixels"]
MAP_SCALES = ("normal_maxima", "normal_pixels")
_MIN_GAP = 1e-12


class NoNormalValidationImagesError(ValueError):
    """The validation split holds no normal image, so nothing can be calibrated on normal data."""


def conformal_rank(count: int, rate: float) -> int:
    """1-based rank, in ascending order, of the normal score used as threshold for a false-reject ``rate``.

    With ``k = ceil((1 - rate) * (count + 1))`` and the threshold at the ``k``-th smallest of ``count``
    normal scores (a part is rejected when its score is strictly above it), a new good part from the same
    distribution is rejected with probability ``(count + 1 - k) / (count + 1) <= rate`` (split-conformal
    bound), and at most ``rate`` of the calibration images themselves are rejected. When ``count`` is too
    small for ``rate`` (``k > count``) the largest score is used; the expected rate is then
    ``1 / (count + 1)``.

    Args:
        count: Number of held-out normal images.
        rate: Target false-reject rate in ``(0, 1)``.
    """
    rank = math.ceil((1.0 - rate) * (count + 1) - 1e-9)
    return min(max(rank, 1), count)


def expected_false_reject_rate(count: int, rate: float) -> float:
    """Return the expected false-reject rate on new good parts of the threshold set from ``count`` normal scores."""
    return (count + 1 - conformal_rank(count, rate)) / (count + 1)


def normal_threshold(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Threshold rejecting at most ``rate`` of good parts (see :func:`conformal_rank`)."""
    ordered = scores.flatten().sort().values
    rank = conformal_rank(ordered.numel(), rate)
    if rank == ordered.numel() and expected_false_reject_rate(ordered.numel(), rate) > rate:
        logger.warning(
            "%d held-out normal images are too few for a false-reject rate of %.3g: the threshold is their "
            "highest score (expected false-reject rate %.3g). Hold out more training images (val_split_ratio).",
            ordered.numel(),
            rate,
            expected_false_reject_rate(ordered.numel(), rate),
        )
    return ordered[rank - 1]


def quantile_transform(values: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map ``values`` to their quantile given ``knots``, the normal quantiles at evenly spaced levels.

    Between the second and the second-to-last knot the map is piecewise linear through
    ``(knots[i], i / (len(knots) - 1))``; beyond them it continues with exponential tails that decay over
    the larger of the neighbouring segment and the knots' whole span, so it stays strictly increasing and
    inside ``(0, 1)``: values beyond every normal one keep their order (AUROC is unchanged) and approach 0
    or 1. A tail as short as its neighbouring segment underflowed float32 when the knots are narrow (the
    maxima of a dozen normal maps, far above most of their pixels): pixels tied at 0, and the calibrated
    maps' pixel AUROC on the bundled sample moved from 0.620 to 0.665. ``NaN`` knots (not
    calibrated) return ``values`` unchanged. The graph uses comparisons, gathers, clamps, ``exp`` and sums
    only, so the map exports to ONNX and OpenVINO.

    Cost: the interior segment of each value is found in two steps (the group of about ``sqrt(K)``
    knots it falls in, then its place in the group), about ``2 sqrt(K)`` comparisons per pixel. Summing
    ``K`` clamped segment ramps per pixel, as this function did before, gives the same map and was 7.5
    of RDExpert's 19 ms served INT8 inference at 256 x 256 on one CPU thread (OpenVINO performance
    counters, 101 knots).

    Args:
        values: Scores or anomaly maps, any shape.
        knots: Non-decreasing normal quantiles at levels ``0, 1/(K-1), ..., 1``; ``K >= 4``.
    """
    count = knots.numel()
    step = 1.0 / (count - 1)
    gaps = (knots[1:] - knots[:-1]).clamp_min(_MIN_GAP)
    span = knots[-1] - knots[0]
    lower = step * torch.exp(((values - knots[1]) / torch.maximum(gaps[0], span)).clamp(max=0.0))
    upper = step * (1.0 - torch.exp(-((values - knots[-2]) / torch.maximum(gaps[-1], span)).clamp(min=0.0)))
    # Interior part: the full segments below the value plus the covered share of its own segment.
    below = _interior_knots_below(values, knots[1:-1])  # 0 .. count - 2
    segment_start = _lookup(knots, below)  # the largest interior knot below the value (when below > 0)
    covered = ((values - segment_start) / _lookup(gaps, below)).clamp(0.0, 1.0)
    middle = (below.to(values.dtype) - 1.0 + covered).clamp(0.0, count - 3.0)
    quantiles = lower + step * middle + upper
    return torch.where(torch.isnan(knots[0]), values, quantiles)


def _interior_knots_below(values: torch.Tensor, interior: torch.Tensor) -> torch.Tensor:
    """Count the ``interior`` knots (non-decreasing) strictly below each value: int64, ``values``' shape.

    The knots are split into groups of ``ceil(sqrt(len))``: the group is found among the groups' first
    knots, then the place inside it, so each value meets about ``2 sqrt(len)`` knots instead of all.
    """
    group = math.ceil(math.sqrt(interior.numel()))
    groups = math.ceil(interior.numel() / group)
    padding = interior.new_full((groups * group - interior.numel(),), math.inf)
    table = torch.cat([interior, padding]).view(groups, group)
    # Knots run along a new first dimension, so the comparisons and sums run along the map's contiguous
    # rows (with the knots last, OpenVINO's CPU kernels took 5 ns per comparison on 128 x 128 maps).
    leading = values.unsqueeze(0)
    # The last group whose first knot is below the value (group 0 when none is): every knot of the
    # groups before it is below the value, none of the groups after it. (Counted over the groups after
    # the first rather than as ``count - 1`` clamped at 0: OpenVINO's CPU plugin computed that integer
    # subtraction and clamp wrongly for every batch row of ``(B, 1)`` scores but the first.)
    group_firsts = table[1:, 0].reshape(-1, *([1] * values.dim()))
    group_index = (leading > group_firsts).sum(dim=0)
    members = table.T.index_select(1, group_index.flatten()).reshape(group, *group_index.shape)
    return group_index * group + (leading > members).sum(dim=0)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along the first dimension, exported as one plain ``Gather`` of the flattened index."""
    return table.index_select(0, index.flatten()).reshape(index.shape + table.shape[1:])


class NormalQuantilePostProcessor(PostProcessor):
    """Thresholds and score calibration from the held-out normal images of the validation split.

    During validation it stores the image scores of the normal images (``gt_label == 0``), the maximum
    of each of their anomaly maps, and a bounded random sample of their anomaly-map pixels. At the end of
    the validation epoch it fixes:

    - **Calibrated scores.** ``pred_score`` becomes the quantile of the raw score among the held-out
      normal scores (``num_knots`` quantiles, interpolated linearly; exponential tails beyond the 1st
      and 99th knot, see :func:`quantile_transform`), so 0.5 is the median good part for every model and
      0.99 means "more unusual than 99% of the good parts seen". ``anomaly_map`` likewise, by
      ``map_scale``: with the quantiles of the normal maps' maxima (default), so 0.5 is the hottest pixel
      of the median good part and, for models whose image score is the map maximum, a map's maximum
      equals the image's calibrated score; or with the quantiles of a sample of normal pixels, where
      half of every good part's pixels lie above 0.5 and heat maps show the tile's texture.
    - **Thresholds**, by ``threshold``:

      - ``"false_reject_rate"`` (default): the image threshold rejects at most ``false_reject_rate`` of
        good parts. It is an order statistic of the ``n`` held-out normal scores
        (:func:`conformal_rank`), so the expected rate on new good parts is at most the requested one
        when ``n >= 1 / false_reject_rate - 1``; below that the highest normal score is used and a
        warning says so. The pixel threshold: with ``pixel_false_positive_rate=None`` (default) the
        same rule on the maxima of the normal anomaly maps, i.e. at most ``false_reject_rate`` of good
        parts show any flagged pixel (for models whose image score is the map maximum it equals the
        image threshold, so a part has a non-empty mask exactly when it is rejected); with a number
        ``p``, the ``1 - p`` quantile of the normal pixels (``p`` of the pixels of good parts flagged).
      - ``"f1_adaptive"``: anomalib's F1-adaptive thresholds on the validation split (image scores
        against labels, maps against the synthetic masks); scores are still normal quantiles.

    Labels and masks compare the raw score with the stored raw threshold (``pred_label = score >
    threshold``), in PyTorch and in the exported graph alike; the normalised thresholds are
    :attr:`normalized_image_threshold` and :attr:`normalized_pixel_threshold`.

    **Choosing the rate.** ``false_reject_rate`` is the share of good parts the line may set aside for
    inspection: the cost of re-inspecting a good part against the cost of shipping a defect. Start from
    what the line can absorb (e.g. 0.02: 2 parts in 100 re-inspected); lower it if re-inspection is
    expensive, raise it if missing defects is (more defects are then caught). The held-out normal images
    limit how small a rate can be honoured: ``n`` normal validation images support rates down to about
    ``1 / (n + 1)``; with ``val_split_mode="synthetic"`` half of the held-out training images are normal
    (``val_split_ratio`` sets how many are held out). Check the measured rates on a labelled sample
    before going live. Use ``threshold="f1_adaptive"`` only when the validation anomalies resemble the
    real defects.

    Args:
        threshold: Threshold rule, ``"false_reject_rate"`` or ``"f1_adaptive"``.
        false_reject_rate: Target share of good parts rejected, in ``(0, 1)``.
        pixel_false_positive_rate: Share of normal pixels flagged, in ``(0, 1)``; ``None`` bounds the share
            of good parts with any flagged pixel by ``false_reject_rate`` instead.
        pixel_threshold_rule: Rule of the pixel threshold when it differs from the image one, e.g.
            ``"f1_adaptive"`` (masks fitted to the synthetic validation anomalies) with the false-reject
            rule for labels; ``None``: the same rule as ``threshold``.
        map_scale: Reference of the calibrated anomaly map: ``"normal_maxima"`` (the maxima of the normal
            validation maps) or ``"normal_pixels"`` (a sample of their pixels). Only the displayed scale
            changes: masks use the raw threshold and the transform keeps the pixels' order.
        num_knots: Number of stored quantiles (evenly spaced levels from 0 to 1), at least 5.
        pixels_per_image: Anomaly-map pixels sampled from each normal validation image.
        max_pixel_samples: Upper bound on the pixels kept over the validation epoch.
        seed: Seed of the pixel sampling.
        **kwargs: Passed to anomalib's ``PostProcessor`` (``enable_normalization``, ``enable_thresholding``,
            ``enable_threshold_matching``).

    Raises:
        ValueError: Naming the argument, when ``threshold`` is unknown or a rate, ``num_knots`` or a sample
            size is out of range.
        NoNormalValidationImagesError: At the end of validation when no validation image is normal.

    Example:
        >>> from anomalib_rdx import AugmentedRD
        >>> from anomalib_rdx.components import NormalQuantilePostProcessor
        >>> model = AugmentedRD(post_processor=NormalQuantilePostProcessor(false_reject_rate=0.05))

        CLI: ``--model.post_processor anomalib_rdx.components.NormalQuantilePostProcessor
        --model.post_processor.init_args.false_reject_rate 0.05``.
    """

    def __init__(
        self,
        threshold: ThresholdRule = "false_reject_rate",
        false_reject_rate: float = 0.02,
        pixel_false_positive_rate: float | None = None,
        pixel_threshold_rule: ThresholdRule | None = None,
        map_scale: MapScale = "normal_maxima",
        num_knots: int = 101,
        pixels_per_image: int = 1024,
        max_pixel_samples: int = 200_000,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("threshold", threshold, THRESHOLD_RULES)
        if pixel_threshold_rule is not None and pixel_threshold_rule not in THRESHOLD_RULES:
            msg = f"pixel_threshold_rule must be None or one of {THRESHOLD_RULES}, got {pixel_threshold_rule!r}."
            raise ValueError(msg)
        check_choice("map_scale", map_scale, MAP_SCALES)
        _check_rate("false_reject_rate", false_reject_rate)
        if pixel_false_positive_rate is not None:
            _check_rate("pixel_false_positive_rate", pixel_false_positive_rate)
        if int(num_knots) != num_knots or num_knots < 5:
            msg = f"num_knots must be an integer of at least 5, got {num_knots!r}."
            raise ValueError(msg)
        for name, value in (("pixels_per_image", pixels_per_image), ("max_pixel_samples", max_pixel_samples)):
            if int(value) != value or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        self.threshold = threshold
        self.pixel_threshold_rule = pixel_threshold_rule
        self.map_scale = map_scale
        self.false_reject_rate = float(false_reject_rate)
        self.pixel_false_positive_rate = None if pixel_false_positive_rate is None else float(pixel_false_positive_rate)
        self.num_knots = int(num_knots)
        self.pixels_per_image = int(pixels_per_image)
        self.max_pixel_samples = int(max_pixel_samples)
        self.seed = int(seed)
        self.register_buffer("image_knots", torch.full((self.num_knots,), float("nan")))
        self.register_buffer("pixel_knots", torch.full((self.num_knots,), float("nan")))
        self.image_knots: torch.Tensor
        self.pixel_knots: torch.Tensor
        self._reset_samples()

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        """Also persist the threshold rule and its rates."""
        return (
            *super()._checkpoint_config_keys,
            "threshold",
            "false_reject_rate",
            "pixel_false_positive_rate",
            "pixel_threshold_rule",
            "map_scale",
            "num_knots",
            "pixels_per_image",
            "max_pixel_samples",
            "seed",
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Accept checkpoints written by anomalib's ``PostProcessor`` (no knots) and other knot counts."""
        for name in ("image_knots", "pixel_knots"):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = torch.full_like(getattr(self, name), float("nan"))
            elif state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key]))
                self.num_knots = state_dict[key].numel()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def _pixel_rule(self) -> ThresholdRule:
        return self.pixel_threshold_rule or self.threshold

    # ----------------------------------------------------------------------------------------- calibration
    def _reset_samples(self) -> None:
        self._normal_scores: list[torch.Tensor] = []
        self._normal_map_maxima: list[torch.Tensor] = []
        self._normal_pixels: list[torch.Tensor] = []
        self._pixel_count = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fresh collection (each validation epoch recalibrates)."""
        del trainer, pl_module
        self._reset_samples()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Collect the normal images' scores, map maxima and pixel sample; feed the F1 rule if chosen."""
        del trainer, pl_module, args, kwargs
        if self.enable_thresholding and self.threshold == "f1_adaptive":
            self._image_threshold_metric.update(outputs)
        if self.enable_thresholding and self._pixel_rule == "f1_adaptive":
            self._pixel_threshold_metric.update(outputs)
        if outputs.gt_label is None:
            return
        normal = outputs.gt_label.flatten() == 0
        if not normal.any():
            return
        anomaly_map = outputs.anomaly_map
        scores = outputs.pred_score
        if scores is None and anomaly_map is not None:
            scores = torch.amax(anomaly_map, dim=(-2, -1))
        if scores is not None:
            self._normal_scores.append(scores.detach().flatten()[normal].float().cpu())
        if anomaly_map is not None:
            maps = anomaly_map.detach().float().cpu().reshape(normal.numel(), -1)[normal.cpu()]
            self._normal_map_maxima.append(maps.amax(dim=1))
            room = self.max_pixel_samples - self._pixel_count
            for image_pixels in maps:
                if room <= 0:
                    break
                count = min(self.pixels_per_image, image_pixels.numel(), room)
                chosen = torch.randperm(image_pixels.numel(), generator=self._generator)[:count]
                self._normal_pixels.append(image_pixels[chosen])
                self._pixel_count += count
                room -= count

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the quantile knots and the thresholds from this epoch's normal validation images.

        Raises:
            NoNormalValidationImagesError: When the validation split held no normal image.
        """
        del pl_module
        self._gather_samples()
        if not self._normal_scores:
            datamodule = getattr(trainer, "datamodule", None)
            mode = getattr(datamodule, "val_split_mode", None)
            msg = (
                "The validation split has no normal image (gt_label == 0): NormalQuantilePostProcessor "
                "calibrates scores and thresholds on held-out normal images. Use val_split_mode='synthetic' "
                f"or 'from_train' with a val_split_ratio > 0 (val_split_mode is {mode!r})."
            )
            raise NoNormalValidationImagesError(msg)
        scores = torch.cat(self._normal_scores)
        levels = torch.linspace(0.0, 1.0, self.num_knots)
        if self.enable_normalization:
            self.image_knots.copy_(torch.quantile(scores, levels))
            reference = self._normal_map_maxima if self.map_scale == "normal_maxima" else self._normal_pixels
            if reference:
                self.pixel_knots.copy_(torch.quantile(torch.cat(reference), levels))
        if self.enable_thresholding:
            self._fix_thresholds(scores)
        self._reset_samples()

    def _gather_samples(self) -> None:
        """Under distributed validation, give every process the samples of all (each saw a shard)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for name in ("_normal_scores", "_normal_map_maxima", "_normal_pixels"):
            local = getattr(self, name)
            shards: list[list[torch.Tensor] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shards, local)
            setattr(self, name, [tensor for shard in shards for tensor in shard or []])

    def _fix_thresholds(self, scores: torch.Tensor) -> None:
        for metric, buffer, rule in (
            (self._image_threshold_metric, self._image_threshold, self.threshold),
            (self._pixel_threshold_metric, self._pixel_threshold, self._pixel_rule),
        ):
            if rule == "f1_adaptive" and metric.update_called:
                buffer.copy_(metric.compute())
            metric.reset()
        if self.threshold == "false_reject_rate":
            self._image_threshold.copy_(normal_threshold(scores, self.false_reject_rate))
        if self._pixel_rule == "f1_adaptive":
            return
        if self.pixel_false_positive_rate is not None and self._normal_pixels:
            pixels = torch.cat(self._normal_pixels)
            self._pixel_threshold.copy_(torch.quantile(pixels, 1.0 - self.pixel_false_positive_rate))
        elif self._normal_map_maxima:
            self._pixel_threshold.copy_(normal_threshold(torch.cat(self._normal_map_maxima), self.false_reject_rate))

    # ----------------------------------------------------------------------------------------- inference
    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Threshold the raw scores and maps, then replace them by their normal quantiles (exported graph)."""
        if predictions.pred_score is None and predictions.anomaly_map is None:
            msg = "At least one of pred_score or anomaly_map must be provided."
            raise ValueError(msg)
        pred_score = predictions.pred_score
        if pred_score is None:
            pred_score = torch.amax(predictions.anomaly_map, dim=(-2, -1))
        anomaly_map = predictions.anomaly_map
        pred_label = pred_mask = None
        if self.enable_thresholding:
            pred_label = self._apply_threshold(pred_score, self.image_threshold)
            pred_mask = self._apply_threshold(anomaly_map, self.pixel_threshold)
        if self.enable_normalization:
            pred_score = quantile_transform(pred_score, self.image_knots)
            anomaly_map = None if anomaly_map is None else quantile_transform(anomaly_map, self.pixel_knots)
        return InferenceBatch(
            pred_label=pred_label,
            pred_score=pred_score,
            pred_mask=pred_mask,
            anomaly_map=anomaly_map,
        )

    def post_process_batch(self, batch: Batch) -> None:
        """Label from the raw values first (the stored thresholds are raw), then normalise."""
        if self.enable_thresholding:
            self.threshold_batch_raw(batch)
        if self.enable_normalization:
            self.normalize_batch(batch)

    def threshold_batch_raw(self, batch: Batch) -> None:
        """Set ``pred_label``/``pred_mask`` (when missing) from the raw score and map."""
        if batch.pred_label is None:
            batch.pred_label = self._apply_threshold(batch.pred_score, self.image_threshold)
        if batch.pred_mask is None:
            batch.pred_mask = self._apply_threshold(batch.anomaly_map, self.pixel_threshold)

    def normalize_batch(self, batch: Batch) -> None:
        """Replace the score and map by their quantiles among the normal validation images."""
        if batch.anomaly_map is not None:
            batch.anomaly_map = quantile_transform(batch.anomaly_map, self.pixel_knots)
        if batch.pred_score is not None:
            batch.pred_score = quantile_transform(batch.pred_score, self.image_knots)

    def threshold_batch(self, batch: Batch) -> None:
        """Label an already normalised batch with the normalised thresholds (anomalib's hook)."""
        if batch.pred_label is None:
            batch.pred_label = self._apply_threshold(batch.pred_score, self.normalized_image_threshold)
        if batch.pred_mask is None:
            batch.pred_mask = self._apply_threshold(batch.anomaly_map, self.normalized_pixel_threshold)

    @property
    def normalized_image_threshold(self) -> torch.Tensor:
        """The image threshold on the calibrated scale (its quantile among the normal scores)."""
        return quantile_transform(self.image_threshold, self.image_knots)

    @property
    def normalized_pixel_threshold(self) -> torch.Tensor:
        """The pixel threshold on the calibrated scale (its quantile on the ``map_scale`` reference)."""
        return quantile_transform(self.pixel_threshold, self.pixel_knots)


def _check_rate(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        msg = f"{name} must be a number strictly between 0 and 1, got {value!r}."
        raise ValueError(msg)
