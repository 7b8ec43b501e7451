"""The operation profiler reads OpenVINO's performance counters of a real IR."""

from pathlib import Path

import numpy as np
import pytest

from anomalib_rdx.benchmark.op_profile import main, profile_ir, report


def _blur_ir(path: Path, kernel: int) -> Path:
    """A one-convolution IR: a dense ``kernel x kernel`` filter over a 256 x 256 single-channel image."""
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([-1, 3, 256, 256], np.float32, name="image")
    gray = ops.reduce_mean(image, np.array([1]), keep_dims=True)
    weights = ops.constant(np.full((1, 1, kernel, kernel), 1 / kernel**2, np.float32))
    blurred = ops.convolution(gray, weights, [1, 1], [kernel // 2] * 2, [kernel // 2] * 2, [1, 1])
    ov.save_model(ov.Model([blurred], [image], "blur"), path)
    return path


def test_profile_names_the_operations_and_their_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small, large = _blur_ir(tmp_path / "small.xml", 3), _blur_ir(tmp_path / "large.xml", 33)
    profiles = {"3x3": profile_ir(small, repeats=5), "33x33": profile_ir(large, repeats=5)}
    for profile in profiles.values():
        assert profile.wall_ms > 0
        assert profile.by_kind(with_kernel=False)[("Convolution",)] > 0
    text = report(profiles)
    assert "CPU:" in text
    assert "Convolution" in text
    main([str(small), "--repeats", "2", "--top", "3"])
    assert "slowest operations" in capsys.readouterr().out


def test_missing_ir_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        profile_ir(tmp_path / "missing.xml")
