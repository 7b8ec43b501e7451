"""Merging benchmark folders of models run in separate processes (committed real result folders)."""

import json
import shutil
from pathlib import Path

import pytest

from anomalib_rdx.benchmark.merge import main, merge_results

RESULTS = Path(__file__).resolve().parents[1] / "notebooks" / "results" / "magnetic_tile_per_type"


def _document(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_merged_folder_holds_every_row_summary_and_file(tmp_path: Path) -> None:
    inputs = [RESULTS / "plain1", RESULTS / "rdx1"]
    merged = merge_results(inputs, tmp_path / "merged")
    assert [row["model"] for row in merged["results"]] == ["RDExpert-plain", "RDExpert"]
    assert merged["config"]["models"] == ["RDExpert-plain", "RDExpert"]
    assert [entry["folder"] for entry in merged["merged_from"]] == [str(folder) for folder in inputs]
    on_disk = _document(tmp_path / "merged")
    for folder in inputs:
        (expected,) = _document(folder)["summary"]
        assert next(entry for entry in on_disk["summary"] if entry["model"] == expected["model"]) == expected
    for row in on_disk["results"]:
        assert (tmp_path / "merged" / row["learning_curve"]).is_file()
    assert (tmp_path / "merged" / "summary.csv").read_text().count("\n") == 3


def test_the_same_model_twice_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RDExpert-plain"):
        merge_results([RESULTS / "plain1", RESULTS / "plain1_pad16"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_folder_without_results_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(RESULTS / "plain1", tmp_path / "plain1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "plain1"), str(tmp_path / "empty"), "--output", str(tmp_path / "merged")])
    assert f"{tmp_path / 'empty'} has no results.json" in capsys.readouterr().err
