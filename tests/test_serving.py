"""``anomalib-rdx-predict`` on a folder with real images and unreadable files, against the synchronous reference.

A small AugmentedRD (one epoch on the bundled magnetic_tile sample, efficientnet_lite0 ImageNet teacher)
is exported to an OpenVINO FP32 IR once; the command then serves real sample images mixed with a
truncated PNG and a text file named ``.png``.
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalib_rdx.benchmark.serving import synchronous_predict_folder, train_small_model
from anomalib_rdx.data import SAMPLE_DATA_ROOT
from anomalib_rdx.inference import (
    PRECISION_RT_INFO,
    SCORE_FIELDS,
    load_inferencer,
    serve_folder,
    throughput_inferencer,
)

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SAMPLE_TEST = SAMPLE_DATA_ROOT / "magnetic_tile" / "test"
# The asynchronous command and the synchronous reference run the same FP32 IR on the same arrays.
SCORE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path``: anomalib's OpenVINOInferencer writes ``openvino_cache/`` in the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def exported_model(lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FP32 OpenVINO IR of a small AugmentedRD trained for one epoch on the bundled sample."""
    _, xml = train_small_model(tmp_path_factory.mktemp("serving_model"), epochs=1, backbone_weights=str(lite0_weights))
    return xml


@pytest.fixture
def readable_images() -> list[Path]:
    """Eight real images: good and defective (two folders share file names, e.g. ``000.png``)."""
    return (
        sorted(SAMPLE_TEST.glob("good/*.png"))[:4]
        + sorted(SAMPLE_TEST.glob("crack/*.png"))
        + [SAMPLE_TEST / "break" / "000.png"]
    )


def copy_images(images: list[Path], folder: Path) -> list[Path]:
    """Copy ``images`` into ``folder/<defect type>/<name>``."""
    copies = []
    for image in images:
        copy = folder / image.parent.name / image.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(image.read_bytes())
        copies.append(copy)
    return copies


def add_unreadable_files(folder: Path, real_png: Path) -> list[Path]:
    """A PNG cut after 1000 bytes and a text file named ``.png``."""
    truncated = folder / "good" / "truncated.png"
    truncated.write_bytes(real_png.read_bytes()[:1000])
    text = folder / "crack" / "notes.png"
    text.write_text("operator notes, not an image\n")
    return [truncated, text]


def read_scores(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def run_predict(*args: str) -> subprocess.CompletedProcess:
    """The real command (this checkout's package) in a subprocess."""
    command = [sys.executable, "-m", "anomalib_rdx.inference", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_unreadable_files_are_named_and_the_rest_is_scored_like_the_synchronous_reference(
    exported_model: Path, readable_images: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "line"
    readable = copy_images(readable_images, folder)
    unreadable = add_unreadable_files(folder, readable[0])
    output = tmp_path / "predictions"

    result = run_predict("--model", str(exported_model), "--images", str(folder), "--output", str(output))

    assert result.returncode != 0, result.stdout + result.stderr
    for path in unreadable:
        assert str(path) in result.stderr
    for path in readable:
        assert str(path) not in result.stderr
    assert "images/s" in result.stdout
    rows = read_scores(output / "scores.csv")
    assert list(rows[0]) == list(SCORE_FIELDS)
    # One row per file, in the folder's order, every file of the folder included.
    assert [row["image"] for row in rows] == sorted(str(path) for path in readable + unreadable)
    errors = {row["image"]: row["error"] for row in rows if row["error"]}
    assert set(errors) == {str(path) for path in unreadable}
    assert all(row["pred_score"] == "" for row in rows if row["error"])
    # Overlays for the readable images only, under their sub-folders (``good/000.png`` and ``crack/000.png``).
    overlays = sorted(str(path.relative_to(output)) for path in output.rglob("*.png"))
    assert overlays == sorted(str(path.relative_to(folder)) for path in readable)

    reference_folder = tmp_path / "readable_only"
    copy_images(readable_images, reference_folder)
    workdir = tmp_path / "reference"
    workdir.mkdir()
    reference = synchronous_predict_folder(load_inferencer(exported_model), reference_folder, workdir)
    expected = {str(Path(row["image"]).relative_to(reference_folder)): row for row in reference}
    served = {str(Path(row["image"]).relative_to(folder)): row for row in rows if not row["error"]}
    assert set(served) == set(expected)
    for name, row in served.items():
        assert abs(float(row["pred_score"]) - expected[name]["pred_score"]) <= SCORE_TOLERANCE, name
        assert int(row["pred_label"]) == expected[name]["pred_label"], name
    # The scores are not all alike: the comparison above can tell images apart.
    assert len({round(row["pred_score"], 4) for row in reference}) > 1


def test_scores_csv_is_appended_and_a_foreign_one_is_kept(
    exported_model: Path, readable_images: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "line"
    copy_images(readable_images[:3], folder)
    output = tmp_path / "predictions"
    inferencer = throughput_inferencer(exported_model)
    first = serve_folder(inferencer, folder, output, overlays=False)
    second = serve_folder(inferencer, folder, output, overlays=False)
    assert first.images_per_second > 0
    assert not first.failed
    assert not second.failed
    rows = read_scores(output / "scores.csv")
    assert len(rows) == 6  # header written once, the second run appended
    assert [row["pred_score"] for row in rows[:3]] == [row["pred_score"] for row in rows[3:]]

    foreign = tmp_path / "other" / "scores.csv"
    foreign.parent.mkdir()
    foreign.write_text("name,score\na.png,0.3\n")
    with pytest.raises(ValueError, match=r"scores\.csv"):
        serve_folder(inferencer, folder, foreign.parent, overlays=False)
    assert foreign.read_text() == "name,score\na.png,0.3\n"


def test_overlays_never_overwrite_the_input_images(
    exported_model: Path, readable_images: list[Path], tmp_path: Path
) -> None:
    images = copy_images(readable_images, tmp_path)
    before = {path: path.read_bytes() for path in images}
    with pytest.raises(ValueError, match="would overwrite an input image"):
        serve_folder(throughput_inferencer(exported_model), tmp_path / "good", tmp_path / "good")
    assert {path: path.read_bytes() for path in images} == before
    assert not (tmp_path / "good" / "scores.csv").exists()


def test_command_runs_fp32_irs_at_f32_unless_the_ir_names_a_precision(exported_model: Path, tmp_path: Path) -> None:
    import openvino as ov

    inferencer = throughput_inferencer(exported_model)
    assert inferencer.model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert str(inferencer.model.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"

    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bfloat16 support: an IR naming bf16 cannot be run at bf16 here")
    model = core.read_model(exported_model)
    model.set_rt_info("bf16", list(PRECISION_RT_INFO))
    named = tmp_path / "model.xml"
    ov.save_model(model, named, compress_to_fp16=False)
    assert throughput_inferencer(named).model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_a_failed_request_is_reported_and_the_next_images_are_still_scored(
    exported_model: Path, readable_images: list[Path]
) -> None:
    # No readable image makes this IR fail (it resizes inside; even a 1x1 image runs), so a request is made
    # to fail with a 4-channel array: OpenVINO then re-raises that error at every later start of its queue.
    from anomalib.data.utils import read_image
    from anomalib.deploy import OpenVINOInferencer

    from anomalib_rdx.inference import _RequestPool, _Result

    inferencer = throughput_inferencer(exported_model)
    images = [OpenVINOInferencer.pre_process(read_image(path)) for path in readable_images]
    images.insert(3, np.concatenate([images[0], images[0][:, :1]], axis=1))  # (1, 4, H, W)
    delivered: list = []
    pool = _RequestPool(inferencer, 0, delivered.append)
    for index, image in enumerate(images):
        pool.submit(_Result(index, Path(f"{index}.png"), Path(f"out/{index}.png"), image=image))
    pool.finish()

    assert sorted(result.index for result in delivered) == list(range(len(images)))
    failed = [result.index for result in delivered if result.error]
    assert failed == [3]
    reference = load_inferencer(exported_model)
    for result in delivered:
        if not result.error:
            expected = reference.predict(images[result.index])
            assert np.allclose(result.outputs["pred_score"], expected.pred_score, atol=SCORE_TOLERANCE)
