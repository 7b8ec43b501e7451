"""Models of ``anomalib_rdx``, one sub-package each, laid out like anomalib's own."""

from .rd_expert import RDExpert

__all__ = ["RDExpert"]
