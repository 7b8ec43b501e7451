"""Models of ``anomalib_rdx``, one sub-package each, laid out like anomalib's own."""

from .augmented_rd import AugmentedRD
from .dual_student_kd import DualStudentKD
from .multiresolution_kd import MultiResolutionKD
from .rd_expert import RDExpert

__all__ = ["AugmentedRD", "DualStudentKD", "MultiResolutionKD", "RDExpert"]
