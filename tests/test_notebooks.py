"""The committed notebooks run end to end in a small configuration (fewer epochs, outputs in tmp)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from anomalib_rdx.benchmark.accuracy import main as benchmark

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

NOTEBOOKS = REPO_ROOT / "notebooks"


def execute(name: str, workdir: Path, **environment: str) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` from the notebooks folder, as a user would; return the executed notebook."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    previous = dict(os.environ)
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    os.environ.update({"NOTEBOOK_WORKDIR": str(workdir), "OMP_NUM_THREADS": threads, **environment})
    try:
        NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return notebook


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def test_openvino_deployment_notebook(tmp_path: Path) -> None:
    notebook = execute("openvino_deployment.ipynb", tmp_path, NOTEBOOK_EPOCHS="1")
    text = outputs_text(notebook)
    assert "FP32: largest |score - torch|" in text
    assert "INT8: largest |score - torch|" in text
    heat_maps = sorted(p.name for p in (tmp_path / "predictions").glob("*.png"))
    crack = REPO_ROOT / "anomalib_rdx" / "data" / "sample" / "magnetic_tile" / "test" / "crack"
    assert heat_maps == sorted(p.name for p in crack.glob("*.png"))
    assert (tmp_path / "predictions" / "scores.csv").read_text().count("\n") == len(heat_maps) + 1


def test_getting_started_notebook(tmp_path: Path) -> None:
    notebook = execute("getting_started.ipynb", tmp_path, NOTEBOOK_EPOCHS="1")
    text = outputs_text(notebook)
    assert "train 96, validation 24, test 70 images" in text
    assert "'image_AUROC'" in text
    assert any(
        output.get("output_type") == "display_data" for cell in notebook.cells for output in cell.get("outputs", [])
    )


def test_compare_models_notebook_on_a_fresh_benchmark(tmp_path: Path, lite0_weights: Path) -> None:
    output = tmp_path / "benchmark"
    benchmark([
        "--models", "AugmentedRD-plain", "Patchcore", "Stfpm",
        "--backbone-weights", str(lite0_weights),
        "--image-size", "64", "--epochs", "1", "--num-workers", "0",
        "--output", str(output),
    ])  # fmt: skip
    notebook = execute("compare_models.ipynb", tmp_path, BENCHMARK_DIR=str(output))
    text = outputs_text(notebook)
    assert f"results from {output}" in text
    assert "skipped Stfpm: anomalib's Stfpm always downloads its teacher" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    # bar chart, ROC curves, per-type bars, learning curves, accuracy-latency scatter, heat maps
    assert len(images) == 6
