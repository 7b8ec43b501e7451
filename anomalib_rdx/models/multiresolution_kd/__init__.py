"""MKD: multiresolution knowledge distillation (Salehi et al., CVPR 2021)."""

from .cloner import Cloner
from .lightning_model import MultiResolutionKD
from .loss import MultiresolutionDistillationLoss
from .torch_model import MultiResolutionKDModel

__all__ = ["Cloner", "MultiResolutionKD", "MultiResolutionKDModel", "MultiresolutionDistillationLoss"]
