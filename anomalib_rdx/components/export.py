"""Export helpers: name what blocks an ONNX export; INT8 post-training quantisation that keeps maps exact.

anomalib exports through ``torch.onnx.export`` and quantises with NNCF (``CompressionType.INT8_PTQ``).
Two things are added here for the distillation models:

- :func:`blocking_operation` reads the exporter's error and names the operator it could not translate,
  so that a failed export says *which* operation blocks it.
- :func:`quantize_int8` is anomalib's INT8 post-training quantisation with the map head kept in FP32: the
  Gaussian smoothing of the anomaly map (the convolution on the single-channel map) and every operation
  after it (:func:`map_head_nodes`). Quantising it
  (an 8-bit activation grid over a map whose useful differences are a few thousandths) collapsed every
  score and map of AugmentedRD to 0 on magnetic_tile. The image score's own operations stay FP32 too
  (:func:`score_head_nodes`): MultiResolutionKD's paper score is computed from the features beside the
  map, and quantising it took its validation image AUROC on magnetic_tile from 0.92 to 0.60 (0.93 with
  it kept in FP32). Two more parts stay FP32, found by quantising one sub-network at a time and chosen
  on the visible synthetic validation split: the convolutions that read the image (every network's stem
  and first block, :func:`image_convolution_nodes`) and the feature comparison with the convolutions that
  produce the compared features (:func:`comparison_nodes`: the student's output projections). Together
  they are about 9% of RDExpert's multiply-adds and took its INT8 loss on magnetic_tile's test split from
  0.064 to 0.002 image AUROC. The rest of the feature networks is quantised; calibration reads the
  datamodule's validation loader, which must not contain test images.
"""

import logging
import re

from anomalib.data import AnomalibDataModule
from anomalib.data.utils import ValSplitMode

logger = logging.getLogger(__name__)

_ATEN_OPERATOR = re.compile(r"aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")
_TEST_SPLITS = {ValSplitMode.FROM_TEST, ValSplitMode.SAME_AS_TEST}
MIN_CALIBRATION_IMAGES = 300


class ExportError(RuntimeError):
    """A model's graph cannot be exported; the message names the blocking operation."""


def blocking_operation(error: BaseException) -> str | None:
    """Find the first ATen operator named in ``error`` or the errors it was raised from."""
    seen: BaseException | None = error
    while seen is not None:
        match = _ATEN_OPERATOR.search(str(seen))
        if match:
            return match.group(0)
        seen = seen.__cause__ or seen.__context__
    return None


def map_smoothing_nodes(model: "openvino.Model") -> list[str]:  # noqa: F821
    """Names of the convolutions that smooth single-channel anomaly maps in an OpenVINO model."""
    return [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution" and op.input(0).get_partial_shape()[1].get_length() == 1
    ]


def map_head_nodes(model: "openvino.Model") -> list[str]:  # noqa: F821
    """Names of the map smoothing convolutions and of every operation after them (the map head).

    Downstream of the smoothing the graph works on single-channel maps and scores (RDExpert's sum of two
    maps, the image score, anomalib's or the package's normalisation); quantising an input there puts an
    8-bit grid over values whose useful differences are a few thousandths of their range.
    """
    smoothing = set(map_smoothing_nodes(model))
    names, frontier, seen = [], [op for op in model.get_ops() if op.get_friendly_name() in smoothing], set()
    while frontier:
        op = frontier.pop()
        if op.get_friendly_name() in seen:
            continue
        seen.add(op.get_friendly_name())
        names.append(op.get_friendly_name())
        for output in op.outputs():
            frontier.extend(target.get_node() for target in output.get_target_inputs())
    return names


_TRUNK_TYPES = {"Convolution", "GroupConvolution", "Parameter", "Constant"}


def comparison_nodes(model: "openvino.Model", start: list[str] | None = None) -> list[str]:  # noqa: F821
    """Name the operations between the compared feature maps and ``start``, and the convolutions feeding them.

    ``start`` defaults to the map smoothing. Walks upstream from the ``start`` operations and stops at
    convolutions (kept, they produce the compared features) and at tensors that the networks also use
    further on (a teacher level that feeds the next block), so the walk never enters the networks' trunks.
    The smoothing's own convolutions are not a trunk: the padded map they read is part of the comparison.
    """
    smoothing = set(map_smoothing_nodes(model))
    start_names = smoothing if start is None else set(start)
    names: list[str] = []
    frontier = [op for op in model.get_ops() if op.get_friendly_name() in start_names]
    seen = {op.get_friendly_name() for op in frontier}
    while frontier:
        op = frontier.pop()
        for source in (value.get_source_output().get_node() for value in op.inputs()):
            name = source.get_friendly_name()
            if name in seen or source.get_type_name() in {"Parameter", "Constant"}:
                continue
            seen.add(name)
            names.append(name)
            consumers = [target.get_node() for out in source.outputs() for target in out.get_target_inputs()]
            feeds_trunk = any(
                consumer.get_type_name() in _TRUNK_TYPES and consumer.get_friendly_name() not in smoothing
                for consumer in consumers
            )
            if source.get_type_name() not in _TRUNK_TYPES and not feeds_trunk:
                frontier.append(source)
    return names


def score_head_nodes(model: "openvino.Model") -> list[str]:  # noqa: F821
    """Name the operations that compute the image score from the compared features (:func:`comparison_nodes`).

    For a score read from the smoothed map these are the map head's; MultiResolutionKD's paper score (the
    whole-image discrepancy of the expert's and the cloner's features) is computed beside the map, and its
    operations are quantised unless named here.
    """
    scores = [result for result in model.get_results() if "pred_score" in result.input_value(0).get_names()]
    return comparison_nodes(model, [result.get_friendly_name() for result in scores])


_CONVOLUTIONS = {"Convolution", "GroupConvolution"}
IMAGE_CONVOLUTIONS = 3


def image_convolution_nodes(model: "openvino.Model", depth: int = IMAGE_CONVOLUTIONS) -> list[str]:  # noqa: F821
    """Name the convolutions that read the image: the first ``depth`` convolutions on every path from the input.

    A convolution's depth is one more than the fewest convolutions between it and the graph's input, so a
    network's stem has depth 1 and every network that reads the image (teacher, expert, a forward student)
    contributes its own first ``depth`` convolutions; a decoder fed by the teacher lies deeper. For an
    EfficientNet teacher ``depth=3`` is its stem and first block (``conv_stem``, ``blocks.0``; teacher's and
    expert's together are 5% of RDExpert's multiply-adds). Quantisation errors made on the raw image travel
    through the whole network.
    """
    convolutions: dict[str, int] = {}
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter":
            convolutions[op.get_friendly_name()] = 0
            continue
        upstream = [
            convolutions[source.get_friendly_name()]
            for source in (value.get_source_output().get_node() for value in op.inputs())
            if source.get_friendly_name() in convolutions
        ]
        if not upstream:
            continue
        count = min(upstream) + (op.get_type_name() in _CONVOLUTIONS)
        convolutions[op.get_friendly_name()] = count
        if op.get_type_name() in _CONVOLUTIONS and count <= depth:
            names.append(op.get_friendly_name())
    return names


def int8_fp32_nodes(
    model: "openvino.Model",  # noqa: F821
    image_convolutions: int = 0,
    comparison: bool = False,
) -> list[str]:
    """Name what :func:`quantize_int8` keeps in FP32, once each.

    The map head and the image score's operations always; with ``image_convolutions > 0`` also the
    convolutions that read the image (:func:`image_convolution_nodes`), with ``comparison`` the feature
    comparison and the convolutions that produce the compared features (:func:`comparison_nodes`).
    """
    names = map_head_nodes(model) + score_head_nodes(model)
    if image_convolutions > 0:
        names += image_convolution_nodes(model, image_convolutions)
    if comparison:
        names += comparison_nodes(model)
    return list(dict.fromkeys(names))


def quantize_int8(model: "openvino.Model", datamodule: AnomalibDataModule | None) -> "openvino.Model":  # noqa: F821
    """NNCF post-training INT8 quantisation calibrated on ``datamodule``'s validation images.

    Keeps in FP32 what :func:`int8_fp32_nodes` names with the image convolutions and the comparison: the
    map head, the image score, the feature comparison with the convolutions producing the compared
    features, and the first :data:`IMAGE_CONVOLUTIONS` convolutions on every path from the image.

    Raises:
        ValueError: Without a datamodule, or when its validation split is made of test images.
    """
    import nncf

    if datamodule is None:
        msg = "INT8_PTQ needs a datamodule: its validation images calibrate the quantisation."
        raise ValueError(msg)
    split = getattr(datamodule, "val_split_mode", None)
    if split is not None and ValSplitMode(split) in _TEST_SPLITS:
        msg = (
            f"INT8 calibration would read test images (val_split_mode={ValSplitMode(split).value!r}). "
            "Calibrate on training images: val_split_mode 'from_train' (or 'synthetic')."
        )
        raise ValueError(msg)
    datamodule.setup("fit")
    # As anomalib 2.7's own ``_post_training_quantization_ov`` (which this replaces, see
    # tests/test_private_hooks.py): a model exported with a static batch size is calibrated with batches
    # of that size, and a small calibration set is warned about.
    model_input = model.input(0)
    if model_input.partial_shape[0].is_static:
        datamodule.eval_batch_size = model_input.shape[0]
    dataloader = datamodule.val_dataloader()
    if len(dataloader.dataset) < MIN_CALIBRATION_IMAGES:
        logger.warning(
            "INT8 calibration on %d images; anomalib recommends at least %d.",
            len(dataloader.dataset),
            MIN_CALIBRATION_IMAGES,
        )
    kept_in_fp32 = int8_fp32_nodes(model, IMAGE_CONVOLUTIONS, comparison=True)
    logger.info(
        "INT8: keeping the map head, the image score, the feature comparison and the convolutions that read "
        "the image in FP32 (%d operations)",
        len(kept_in_fp32),
    )
    calibration = nncf.Dataset(dataloader, lambda batch: batch.image)
    ignored = nncf.IgnoredScope(names=kept_in_fp32, validate=False)  # not every op there is quantisable
    return nncf.quantize(model, calibration, ignored_scope=ignored)
