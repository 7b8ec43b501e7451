"""Data helpers: the bundled sample dataset and MVTec-layout subsets."""

from pathlib import Path

from .subset import make_mvtec_subset

SAMPLE_DATA_ROOT = Path(__file__).parent / "sample"
"""Folder holding the bundled sample dataset ``magnetic_tile`` (MVTec layout)."""

__all__ = ["SAMPLE_DATA_ROOT", "make_mvtec_subset"]
