"""AugmentedRD: augmented-input reverse distillation (Nguyen et al., IMCOM 2023)."""

from .augmentation import RestorationAugmenter
from .lightning_model import AugmentedRD
from .torch_model import AugmentedRDModel

__all__ = ["AugmentedRD", "AugmentedRDModel", "RestorationAugmenter"]
