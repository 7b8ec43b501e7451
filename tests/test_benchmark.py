"""The benchmark command end to end on a tiny real subset: output files, schema, finite metrics in range."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.metrics import AUROC

from anomalib_rdx.benchmark import accuracy
from anomalib_rdx.benchmark.accuracy import COST_COLUMNS, METRICS, BenchmarkConfig, main
from anomalib_rdx.benchmark.per_type import PER_TYPE_METRICS
from anomalib_rdx.data import make_mvtec_subset

from .conftest import SHARED_MAGNETIC_TILE, requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

MODELS = ["AugmentedRD-plain", "Patchcore", "ReverseDistillation", "Stfpm"]
DEFECT_TYPES = ("blowhole", "break", "crack", "fray", "uneven")


@pytest.fixture(scope="module")
def benchmark_output(tmp_path_factory: pytest.TempPathFactory, lite0_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_mvtec_subset(SHARED_MAGNETIC_TILE, root / "magnetic_tile", train_good=16, test_good=3, test_per_defect=1)
    output = root / "out"
    main([
        "--data", str(root / "magnetic_tile"),
        "--models", *MODELS,
        "--backbone-weights", str(lite0_weights),
        "--image-size", "64",
        "--epochs", "1",
        "--num-workers", "0",
        "--seeds", "0", "1",
        "--output", str(output),
    ])  # fmt: skip
    return output


def test_rows_have_finite_metrics_in_range(benchmark_output: Path) -> None:
    document = json.loads((benchmark_output / "results.json").read_text())
    environment = set(document["environment"])
    assert {"anomalib_rdx", "anomalib", "torch", "threads", "cpu", "cores", "avx512_bf16", "amx_bf16"} <= environment
    assert document["config"]["image_size"] == 64
    assert document["config"]["seeds"] == [0, 1]
    rows = document["results"]
    assert [(row["seed"], row["model"]) for row in rows] == [(seed, model) for seed in (0, 1) for model in MODELS]
    for row in rows:
        if row["status"] == "skipped":
            continue
        for metric in METRICS:
            assert math.isfinite(row[metric]), (row["model"], metric)
            assert 0.0 <= row[metric] <= 1.0, (row["model"], metric, row[metric])
        assert row["test_images"] == 8
        assert row["parameters"] > 0
        scores = (benchmark_output / row["test_scores"]).read_text().splitlines()
        assert scores[0] == "image_path,gt_label,pred_score,normalized_score,pred_label"
        assert len(scores) == 1 + row["test_images"]
        assert (benchmark_output / row["checkpoint"]).is_file()
        for column in COST_COLUMNS:
            assert math.isfinite(row[column]), (row["model"], column)
            assert row[column] > 0, (row["model"], column)
        assert row["good_images"] == 3
        for defect_type in DEFECT_TYPES:
            assert row[f"{defect_type}_images"] == 1
            for metric in PER_TYPE_METRICS:
                assert 0.0 <= row[f"{defect_type}_{metric}"] <= 1.0, (row["model"], defect_type, metric)


def test_per_type_image_auroc_is_the_auroc_of_good_and_that_type(benchmark_output: Path) -> None:
    """Recomputed from the per-image scores file with anomalib's AUROC: good images + one defect type.

    The per-type metrics read the served (post-processed) scores, as anomalib's Evaluator does for the
    pooled ones; for PatchCore, whose raw distances anomalib's AUROC would squash with a sigmoid, too.
    """
    rows = json.loads((benchmark_output / "results.json").read_text())["results"]
    for row in (row for row in rows if row["model"] in {"AugmentedRD-plain", "Patchcore"}):
        with (benchmark_output / row["test_scores"]).open() as file:
            scores = list(csv.DictReader(file))
        assert all(0.0 <= float(s["normalized_score"]) <= 1.0 for s in scores)
        assert {s["pred_label"] for s in scores} <= {"0", "1"}
        for defect_type in DEFECT_TYPES:
            chosen = [s for s in scores if Path(s["image_path"]).parent.name in {"good", defect_type}]
            metric = AUROC(fields=["pred_score", "gt_label"])
            metric.update(
                SimpleNamespace(
                    pred_score=torch.tensor([float(s["normalized_score"]) for s in chosen]),
                    gt_label=torch.tensor([int(s["gt_label"]) for s in chosen]),
                )
            )
            expected = float(metric.compute())
            assert row[f"{defect_type}_image_AUROC"] == pytest.approx(expected, abs=1e-4), (row["model"], defect_type)


def test_learning_curve_has_validation_metrics(benchmark_output: Path) -> None:
    rows = json.loads((benchmark_output / "results.json").read_text())["results"]
    row = next(row for row in rows if row["model"] == "AugmentedRD-plain")
    with (benchmark_output / row["learning_curve"]).open() as file:
        curve = list(csv.DictReader(file))
    assert len(curve) == 1  # one epoch, validated once
    assert int(curve[0]["step"]) == row["train_steps"] > 0
    assert 0 < float(curve[0]["train_seconds"]) <= row["train_seconds"]
    assert 0.0 <= float(curve[0]["val_image_AUROC"]) <= 1.0


def test_models_that_cannot_run_are_reported_with_the_reason(benchmark_output: Path) -> None:
    rows = json.loads((benchmark_output / "results.json").read_text())["results"]
    reasons = {row["model"]: row.get("reason", "") for row in rows if row["status"] == "skipped"}
    assert set(reasons) == {"ReverseDistillation", "Stfpm"}
    assert "efficientnet_lite0" in reasons["ReverseDistillation"]
    assert "downloads its teacher" in reasons["Stfpm"]


def test_summary_has_mean_and_std_over_seeds(benchmark_output: Path) -> None:
    summary = {
        entry["model"]: entry for entry in json.loads((benchmark_output / "results.json").read_text())["summary"]
    }
    rows = json.loads((benchmark_output / "results.json").read_text())["results"]
    for model in ("AugmentedRD-plain", "Patchcore"):
        values = [row["image_AUROC"] for row in rows if row["model"] == model]
        assert summary[model]["seeds"] == 2
        assert summary[model]["image_AUROC_mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert summary[model]["image_AUROC_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
    assert summary["Stfpm"]["status"] == "skipped"
    with (benchmark_output / "summary.csv").open() as file:
        assert [row["model"] for row in csv.DictReader(file)] == MODELS
    with (benchmark_output / "results.csv").open() as file:
        header = next(csv.reader(file))
    assert {"model", "seed", "status", *METRICS, *COST_COLUMNS} <= set(header)


def test_trained_checkpoint_is_evaluated_without_training(benchmark_output: Path, lite0_weights: Path) -> None:
    """Re-evaluating a run's checkpoint reproduces its test metrics; an inference switch changes them."""
    rows = json.loads((benchmark_output / "results.json").read_text())["results"]
    trained = next(row for row in rows if row["model"] == "AugmentedRD-plain" and row["seed"] == 0)
    checkpoint = benchmark_output / trained["checkpoint"]
    root = benchmark_output.parent
    common = [
        "--data", str(root / "magnetic_tile"), "--models", "AugmentedRD-plain",
        "--backbone-weights", str(lite0_weights), "--image-size", "64", "--num-workers", "0",
        "--trained-checkpoint", str(checkpoint), "--no-costs",
    ]  # fmt: skip
    main([*common, "--output", str(root / "again")])
    main([*common, "--border-padding", "16", "--output", str(root / "padded")])
    # --model-arg reaches a re-evaluated model too; with no heat maps and no checkpoint to save, the run's
    # folder must still be made for its score files (it was not: the run crashed after its test pass)
    main([*common, "--model-arg", "visualizer=false", "--output", str(root / "quiet")])
    (again,) = json.loads((root / "again" / "results.json").read_text())["results"]
    (padded,) = json.loads((root / "padded" / "results.json").read_text())["results"]
    (quiet,) = json.loads((root / "quiet" / "results.json").read_text())["results"]
    assert quiet["image_AUROC"] == pytest.approx(trained["image_AUROC"], abs=1e-6)
    assert (root / "quiet" / quiet["test_scores"]).is_file()
    assert not any((root / "quiet").rglob("*.png"))
    assert again["train_steps"] == padded["train_steps"] == 0
    assert again["train_seconds"] == 0.0  # anomalib's TimerCallback saw no fit
    assert again["test_seconds"] > 0.0
    for metric in ("image_AUROC", "pixel_AUROC", "blowhole_image_AUROC"):
        assert again[metric] == pytest.approx(trained[metric], abs=1e-6), metric
    assert padded["pixel_AUROC"] != pytest.approx(trained["pixel_AUROC"], abs=1e-6)
    assert json.loads((root / "padded" / "results.json").read_text())["config"]["inference_options"] == {
        "border_padding": 16
    }


def test_a_step_budget_trains_past_the_first_epoch(benchmark_output: Path, lite0_weights: Path) -> None:
    """``--max-steps`` lifts the default one-epoch limit (it once stopped at one epoch, whatever the steps)."""
    root = benchmark_output.parent
    main([
        "--data", str(root / "magnetic_tile"), "--models", "AugmentedRD-plain",
        "--backbone-weights", str(lite0_weights), "--image-size", "64", "--num-workers", "0",
        "--train-batch-size", "4", "--max-steps", "6", "--output", str(root / "steps"), "--no-costs",
    ])  # fmt: skip
    document = json.loads((root / "steps" / "results.json").read_text())
    (row,) = document["results"]
    assert row["train_steps"] == 6  # 14 training images at batch 4: four steps per epoch
    # --no-costs: no inference timing, the parameter count stays
    assert document["config"]["measure_costs"] is False
    assert row["parameters"] > 0
    assert not any(column in row for column in COST_COLUMNS[1:])
    assert BenchmarkConfig(max_steps=6, epochs=1).training_budget() == {"max_epochs": -1, "max_steps": 6}
    assert BenchmarkConfig(epochs=2).training_budget() == {"max_epochs": 2, "max_steps": -1}


def test_model_arguments_reach_the_models_that_take_them(lite0_weights: Path) -> None:
    """``--model-arg`` sets a constructor argument of the models that take it; a typo is refused by name."""
    config = BenchmarkConfig(backbone_weights=str(lite0_weights), image_size=64, model_options={"teacher_lr": 1e-5})
    assert accuracy.MODELS["RDExpert"](config).teacher_lr == 1e-5
    assert "teacher_lr" not in accuracy.MODELS["AugmentedRD"](config).hparams  # not one of its arguments: left out
    with pytest.raises(SystemExit):
        main(["--models", "RDExpert", "--model-arg", "teacher_lrr=1e-5"])
    with pytest.raises(SystemExit):
        main(["--models", "RDExpert", "--model-arg", "teacher_lr"])


def test_model_argument_values_are_typed() -> None:
    assert accuracy.model_argument("teacher_lr=1e-5") == ("teacher_lr", 1e-5)  # YAML would read a string
    assert accuracy.model_argument("betas=(0.9, 0.999)") == ("betas", (0.9, 0.999))
    assert accuracy.model_argument("top_k_share=0.05") == ("top_k_share", 0.05)
    assert accuracy.model_argument("border_padding=16") == ("border_padding", 16)
    assert accuracy.model_argument("use_expert=false") == ("use_expert", False)
    assert accuracy.model_argument("use_expert=False") == ("use_expert", False)
    assert accuracy.model_argument("gii_mode=off") == ("gii_mode", "off")


def test_val_blend_is_checked_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A reversed or out-of-range ``--val-blend`` is refused by name before a model is built or a file written."""
    with pytest.raises(SystemExit):
        main(["--models", "RDExpert", "--val-blend", "0.5", "0.1", "--output", str(tmp_path / "out")])
    assert "--val-blend" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    config = BenchmarkConfig(val_blend=(0.1, 1.0), seed=3)
    (callback,) = accuracy.validation_split(config.val_blend, config.seed)
    assert callback.blend_factor == (0.1, 1.0)
    assert callback.seed == 3
    defaults = BenchmarkConfig()
    assert accuracy.validation_split(defaults.val_blend, defaults.seed) == []  # anomalib's split by default
