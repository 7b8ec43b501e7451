"""Data helpers: the bundled sample dataset, MVTec-layout subsets, a visible synthetic validation split."""

from pathlib import Path

from .subset import make_mvtec_subset
from .synthetic import SyntheticValidation

SAMPLE_DATA_ROOT = Path(__file__).parent / "sample"
"""Folder holding the bundled sample dataset ``magnetic_tile`` (MVTec layout)."""

__all__ = ["SAMPLE_DATA_ROOT", "SyntheticValidation", "make_mvtec_subset"]
