"""anomalib's own models in the benchmark, under the benchmark's teacher, or skipped with the reason.

The benchmark compares the package's models with anomalib's stock ``ReverseDistillation`` (the
baseline) and its strongest peers ``Stfpm`` and ``Patchcore``, all on the configured teacher backbone and
weights file. A stock model that cannot run in that setting raises :class:`ModelSkipped` with the
reason, which the benchmark writes as a ``skipped`` row:

- ``ReverseDistillation`` builds its student from a ResNet-only decoder table;
- ``Stfpm`` always downloads its teacher's timm weights (anomalib fixes ``pre_trained=True``), so it
  cannot use a local weights file and needs the hub;
- ``Patchcore`` takes ``pre_trained=False`` and the local weights are loaded into its extractor; its
  coreset ratio is lowered to ``BenchmarkConfig.patchcore_coreset_ratio`` (default
  ``PATCHCORE_CORESET_RATIO``; anomalib's 0.1 makes greedy coreset selection take hours on a CPU for a
  few hundred images, and 0.01 still takes about 50 minutes for magnetic_tile's 685 training images).
"""

from typing import TYPE_CHECKING

from anomalib.metrics import Evaluator
from anomalib.models import Patchcore, ReverseDistillation, Stfpm
from anomalib.models.components import AnomalibModule

from anomalib_rdx.components import describe_feature_pyramid, load_backbone_weights, resolve_weights_path

if TYPE_CHECKING:
    from .accuracy import BenchmarkConfig

PATCHCORE_CORESET_RATIO = 0.01


class ModelSkipped(Exception):  # noqa: N818 (an outcome, not an error)
    """A model cannot run in the benchmark's setting; ``str(error)`` is the reason."""


def _layer_names(config: "BenchmarkConfig") -> list[str]:
    return list(describe_feature_pyramid(config.backbone, config.layers).names)


def _load_teacher(extractor: object, config: "BenchmarkConfig") -> None:
    """Load the configured local weights into an anomalib ``TimmFeatureExtractor``."""
    load_backbone_weights(extractor.feature_extractor, resolve_weights_path(config.backbone_weights), config.backbone)


def stock_reverse_distillation(config: "BenchmarkConfig", evaluator: Evaluator) -> AnomalibModule:
    """Build anomalib's ReverseDistillation with the benchmark's teacher."""
    try:
        model = ReverseDistillation(
            backbone=config.backbone,
            layers=_layer_names(config),
            pre_trained=config.backbone_weights is None,
            pre_processor=ReverseDistillation.configure_pre_processor((config.image_size, config.image_size)),
            evaluator=evaluator,
        )
    except ValueError as error:
        msg = f"anomalib's ReverseDistillation cannot mirror backbone '{config.backbone}' ({error}): ResNet only"
        raise ModelSkipped(msg) from error
    except Exception as error:
        msg = f"anomalib's ReverseDistillation could not fetch timm weights for '{config.backbone}': {error}"
        raise ModelSkipped(msg) from error
    if config.backbone_weights is not None:
        _load_teacher(model.model.encoder, config)
    return model


def stock_stfpm(config: "BenchmarkConfig", evaluator: Evaluator) -> AnomalibModule:
    """Build anomalib's STFPM, which always downloads its teacher's weights."""
    if config.backbone_weights is not None:
        msg = (
            "anomalib's Stfpm always downloads its teacher from timm (pre_trained=True is fixed), so it cannot use "
            f"the local weights file '{config.backbone_weights}'; run the benchmark with --backbone-weights none "
            "where the hub is reachable"
        )
        raise ModelSkipped(msg)
    try:
        return Stfpm(
            backbone=config.backbone,
            layers=_layer_names(config),
            pre_processor=Stfpm.configure_pre_processor((config.image_size, config.image_size)),
            evaluator=evaluator,
        )
    except Exception as error:
        msg = f"anomalib's Stfpm could not fetch timm weights for '{config.backbone}': {error}"
        raise ModelSkipped(msg) from error


def stock_patchcore(config: "BenchmarkConfig", evaluator: Evaluator) -> AnomalibModule:
    """Build anomalib's PatchCore on the two deepest benchmark layers (its default uses strides 8 and 16)."""
    try:
        model = Patchcore(
            backbone=config.backbone,
            layers=_layer_names(config)[-2:],
            pre_trained=config.backbone_weights is None,
            coreset_sampling_ratio=config.patchcore_coreset_ratio,
            pre_processor=Patchcore.configure_pre_processor((config.image_size, config.image_size)),
            evaluator=evaluator,
        )
    except Exception as error:
        msg = f"anomalib's Patchcore could not fetch timm weights for '{config.backbone}': {error}"
        raise ModelSkipped(msg) from error
    if config.backbone_weights is not None:
        _load_teacher(model.model.feature_extractor, config)
    return model
