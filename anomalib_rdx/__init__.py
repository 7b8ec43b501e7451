"""Knowledge-distillation anomaly detectors for anomalib.

Use them as anomalib models: ``anomalib train --model anomalib_rdx.RDExpert --data ...``.
"""

from .models import AugmentedRD, DualStudentKD, MultiResolutionKD, RDExpert

__all__ = ["AugmentedRD", "DualStudentKD", "MultiResolutionKD", "RDExpert"]
__version__ = "0.1.0"
