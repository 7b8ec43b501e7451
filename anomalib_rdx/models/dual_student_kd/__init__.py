"""DSKD: dual-student knowledge distillation (Yao & Gao, 2024)."""

from .anomaly_map import DualStudentAnomalyMap
from .lightning_model import DualStudentKD
from .loss import PyramidMatchingLoss
from .torch_model import DualStudentKDModel

__all__ = ["DualStudentAnomalyMap", "DualStudentKD", "DualStudentKDModel", "PyramidMatchingLoss"]
