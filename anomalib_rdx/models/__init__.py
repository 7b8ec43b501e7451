"""Models of ``anomalib_rdx``, one sub-package each, laid out like anomalib's own."""

from .augmented_rd import AugmentedRD
from .dual_student_kd import DualStudentKD
from .rd_expert import RDExpert

__all__ = ["AugmentedRD", "DualStudentKD", "RDExpert"]
