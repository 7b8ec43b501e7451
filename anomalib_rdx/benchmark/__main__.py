"""``python -m anomalib_rdx.benchmark``: the accuracy benchmark (see :mod:`anomalib_rdx.benchmark.accuracy`)."""

from anomalib_rdx.benchmark.accuracy import main

if __name__ == "__main__":
    main()
