"""glibc keeps freed tensor memory for the next training step (:mod:`anomalib_rdx.components.allocator`)."""

import ctypes
import os
import subprocess
import sys

import pytest

from anomalib_rdx.components import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_memory_is_kept_for_reuse_unless_the_user_configured_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thresholds are set once per process; a user's MALLOC_* or GLIBC_TUNABLES setting is left alone."""
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.keep_freed_memory_for_reuse() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    for name in allocator.USER_MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("this C library has no glibc mallopt")
    assert allocator.keep_freed_memory_for_reuse() is True
    assert allocator.keep_freed_memory_for_reuse() is True  # once only


PAGE_FAULTS_OF_REPEATED_LARGE_TENSORS = """
import resource, torch
from anomalib_rdx.components.allocator import keep_freed_memory_for_reuse

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        torch.ones(16 * 1024 * 1024)  # 64 MiB, above glibc's largest default mmap threshold (32 MiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
applied = keep_freed_memory_for_reuse()
faults()  # the first allocation after the change maps the heap once
print(before, faults(), applied)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_large_tensor_allocated_again_reuses_its_pages() -> None:
    """Six 64 MiB tensors in a row: each is a fresh mapping (page faults) before, the same memory after."""
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_MALLOC_SETTINGS}
    result = subprocess.run(
        [sys.executable, "-c", PAGE_FAULTS_OF_REPEATED_LARGE_TENSORS],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    before, after, applied = result.stdout.split()
    if applied != "True":
        pytest.skip("this C library has no glibc mallopt")
    assert int(before) > 6 * 16_000  # 6 x 16384 pages of 4 KiB, each touched anew
    assert int(after) < int(before) / 10
