"""Benchmarks of the package's models.

- :mod:`anomalib_rdx.benchmark.accuracy` (``python -m anomalib_rdx.benchmark``): train and evaluate
  models under one protocol.
- :mod:`anomalib_rdx.benchmark.deployment`: PyTorch vs OpenVINO FP32 vs INT8 latency, memory, size
  and accuracy.
"""

from .accuracy import MODELS, BenchmarkConfig, benchmark_evaluator, run_one, write_results

__all__ = ["MODELS", "BenchmarkConfig", "benchmark_evaluator", "run_one", "write_results"]
