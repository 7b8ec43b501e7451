"""RD with Expert and Guided Information Injection (Liu et al., AAAI 2025)."""

from .lightning_model import RDExpert
from .loss import RDExpertLoss
from .torch_model import RDExpertModel

__all__ = ["RDExpert", "RDExpertLoss", "RDExpertModel"]
