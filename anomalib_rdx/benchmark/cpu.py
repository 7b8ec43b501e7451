"""The CPU a benchmark ran on: every timing is written with it, since figures from different CPUs differ."""

import os
from pathlib import Path

# CPU flags that decide how fast INT8 runs (VNNI: 8-bit dot products; without it OpenVINO's INT8
# convolutions have no fast kernel) and how fast bf16 runs (PyTorch autocast, OpenVINO's default
# inference precision).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_description() -> dict:
    """CPU model name, the cores this process may use and the INT8/bf16 flags (Linux ``/proc/cpuinfo``).

    Every timing the benchmarks write carries it: figures from different CPUs are not comparable.
    """
    name, flags = "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name, "cores": cores, **{flag: flag in flags for flag in CPU_FLAGS}}
