"""Building blocks shared by the models of ``anomalib_rdx``."""

from .anomaly_map import CosineDistanceMap, SeparableGaussianBlur
from .backbone import BackboneError, FeaturePyramid, build_feature_extractor, describe_feature_pyramid, set_trainable
from .base import DistillationModule
from .decoder import PyramidBottleneck, PyramidDecoder, StagedDecoder, build_student, check_input_size
from .losses import flat_cosine_distance, pixel_cosine_distance, pixel_cosine_distance_maps
from .metrics import ScoreAUROC
from .normalization import ImageNetNormalization
from .post_processing import NoNormalValidationImagesError, NormalQuantilePostProcessor
from .weights import WeightsMismatchError, load_backbone_weights, resolve_weights_path

__all__ = [
    "BackboneError",
    "CosineDistanceMap",
    "DistillationModule",
    "FeaturePyramid",
    "ImageNetNormalization",
    "NoNormalValidationImagesError",
    "NormalQuantilePostProcessor",
    "PyramidBottleneck",
    "PyramidDecoder",
    "ScoreAUROC",
    "SeparableGaussianBlur",
    "StagedDecoder",
    "WeightsMismatchError",
    "build_feature_extractor",
    "build_student",
    "check_input_size",
    "describe_feature_pyramid",
    "flat_cosine_distance",
    "load_backbone_weights",
    "pixel_cosine_distance",
    "pixel_cosine_distance_maps",
    "resolve_weights_path",
    "set_trainable",
]
