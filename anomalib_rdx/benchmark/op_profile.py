r"""Where an OpenVINO model spends its time: per-operation performance counters, FP32 beside INT8.

``python -m anomalib_rdx.benchmark.op_profile FP32.xml INT8.xml`` compiles each IR on the CPU with
``PERF_COUNT`` (at ``INFERENCE_PRECISION_HINT=f32``, ``--threads`` inference threads), runs
``--repeats`` inferences of a random ``--batch`` after warm-up, and prints for each IR the median wall
time, then the time per operation type and kernel (``brgconv_avx512_I8`` is an INT8 convolution,
``..._f32`` one left in FP32), then the slowest operations with their shapes. This is how the package
found that anomalib's dense ``33 x 33`` Gaussian blur took 14 of plain reverse distillation's 34 ms and
29 of RDExpert's 59 ms (one thread), in both precisions: see
:mod:`anomalib_rdx.components.anomaly_map`.

Example:
    python -m anomalib_rdx.benchmark.op_profile fp32/model.xml int8/model.xml --batch 1 --threads 1
"""

import argparse
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cpu import cpu_description


@dataclass
class OperationProfile:
    """Mean time per operation over the timed runs of one IR, and the median wall time of a run."""

    wall_ms: float
    op_ms: dict[str, float] = field(default_factory=dict)  # operation name -> ms
    op_kind: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, kernel)

    def by_kind(self, with_kernel: bool = True) -> dict[tuple[str, ...], float]:
        """Milliseconds per operation type (and kernel), slowest first."""
        totals: dict[tuple[str, ...], float] = defaultdict(float)
        for name, milliseconds in self.op_ms.items():
            kind = self.op_kind[name] if with_kernel else self.op_kind[name][:1]
            totals[kind] += milliseconds
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile_ir(
    xml: Path, batch: int = 1, image_size: int = 256, threads: int = 1, repeats: int = 20
) -> OperationProfile:
    """Run ``xml`` with performance counters on; see the module docstring."""
    import openvino as ov

    if not Path(xml).is_file():
        msg = f"No OpenVINO IR at {xml}."
        raise FileNotFoundError(msg)
    config = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    request = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()
    images = np.random.default_rng(0).random((batch, 3, image_size, image_size), dtype=np.float32)
    for _ in range(3):
        request.infer({0: images})
    profile = OperationProfile(wall_ms=0.0)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: images})
        walls.append((time.perf_counter() - start) * 1e3)
        for counter in request.get_profiling_info():
            milliseconds = counter.real_time.total_seconds() * 1e3 / repeats
            profile.op_ms[counter.node_name] = profile.op_ms.get(counter.node_name, 0.0) + milliseconds
            profile.op_kind[counter.node_name] = (counter.node_type, counter.exec_type)
    profile.wall_ms = statistics.median(walls)
    return profile


def report(profiles: dict[str, OperationProfile], top: int = 15) -> str:
    """Text report: wall times, time per operation type for every IR side by side, slowest operations."""
    names = list(profiles)
    cpu = cpu_description()
    lines = [f"CPU: {cpu['cpu']}, {cpu['cores']} cores"]
    lines += [f"{name}: {profile.wall_ms:.2f} ms per run (median)" for name, profile in profiles.items()]
    lines.append("ms per operation type: " + " / ".join(names))
    per_kind = {name: profile.by_kind(with_kernel=False) for name, profile in profiles.items()}
    kinds = {kind for totals in per_kind.values() for kind in totals}
    for kind in sorted(kinds, key=lambda k: -max(per_kind[name].get(k, 0.0) for name in names)):
        values = " / ".join(f"{per_kind[name].get(kind, 0.0):6.2f}" for name in names)
        if any(per_kind[name].get(kind, 0.0) >= 0.01 for name in names):
            lines.append(f"  {kind[0]:24s} {values}")
    for name, profile in profiles.items():
        lines.append(f"slowest operations of {name}:")
        for op, milliseconds in sorted(profile.op_ms.items(), key=lambda item: -item[1])[:top]:
            op_type, kernel = profile.op_kind[op]
            lines.append(f"  {milliseconds:6.2f} ms  {op_type:18s} {kernel:28s} {op}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ir", nargs="+", type=Path, help="OpenVINO .xml files, e.g. the FP32 and the INT8 export")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--top", type=int, default=15, help="slowest operations listed per IR")
    args = parser.parse_args(argv)
    profiles = {str(xml): profile_ir(xml, args.batch, args.image_size, args.threads, args.repeats) for xml in args.ir}
    print(report(profiles, args.top))


if __name__ == "__main__":
    main()
