r"""Train and evaluate models under one protocol: ``python -m anomalib_rdx.benchmark``.

Protocol, the same for every model:
    - data: an MVTec-layout folder (``--root``/``--category``) read by anomalib's ``MVTecAD``
      datamodule; default: the sample bundled with the package;
    - validation split: synthetic anomalies made from held-out training images
      (``val_split_mode=synthetic``), so thresholds and normalisation never see a test image and the
      metrics are on the **whole test split**;
    - same teacher (backbone and weights file), image size, epochs and seed; final checkpoint (no
      selection on the test split);
    - metrics: anomalib's image AUROC and F1, pixel AUROC and PRO (AUPRO up to 30% FPR), each also per
      defect type, plus training and testing wall time (anomalib's ``TimerCallback``), PyTorch
      inference latency per image at batch 1 and 16 with the peak memory of that inference process
      (:mod:`anomalib_rdx.benchmark.measure`), and the parameters inference needs.

Models: the package's four, their ablations, and anomalib's stock ``ReverseDistillation``, ``Stfpm``
and ``Patchcore`` (:mod:`anomalib_rdx.benchmark.stock`); a model that cannot run in the setting gets a
``skipped`` row with the reason. Several ``--seeds`` add mean and standard deviation per model.

Results go to ``<output>/results.json`` (rows, summary, configuration, versions, the CPU), ``results.csv``
and ``summary.csv``; :mod:`anomalib_rdx.benchmark.merge` joins folders of models run in separate processes.

Example:
    python -m anomalib_rdx.benchmark --root ../shared/data --category magnetic_tile \\
        --models RDExpert RDExpert-plain --epochs 3
"""

import argparse
import ast
import csv
import inspect
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anomalib
import torch
from anomalib.callbacks import TimerCallback
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models import Patchcore, ReverseDistillation, Stfpm
from anomalib.models.components import AnomalibModule
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from tqdm import tqdm

import anomalib_rdx
from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.components.checkpoint import load_checkpoint
from anomalib_rdx.components.network import FLIP_SCOPES, FLIP_VIEWS
from anomalib_rdx.components.served import ServedTestBatches
from anomalib_rdx.data import SyntheticValidation
from anomalib_rdx.data.synthetic import check_blend_factor

from .cpu import cpu_description
from .decisions import DecisionRecorder
from .measure import DataAndTeacher, inference_parameters, measure_latency, save_model_checkpoint
from .per_type import PER_TYPE_METRICS, LearningCurve, PerDefectTypeMetrics
from .stock import PATCHCORE_CORESET_RATIO, ModelSkipped, stock_patchcore, stock_reverse_distillation, stock_stfpm

logger = logging.getLogger(__name__)

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO")
COST_COLUMNS = ("train_seconds", "latency_ms_per_image_b1", "latency_ms_per_image_b16", "peak_inference_rss_mib_b16")
LATENCY_BATCHES = (1, 16)


@dataclass
class BenchmarkConfig(DataAndTeacher):
    """What every model of one benchmark run shares."""

    epochs: int = 1
    train_batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 2
    seed: int = 0
    val_split_ratio: float = 0.1
    max_steps: int = -1
    max_minutes: float | None = None
    val_check_interval: int | None = None
    patchcore_coreset_ratio: float = PATCHCORE_CORESET_RATIO
    inference_options: dict = field(default_factory=dict)
    """Inference switches given to every package model (``border_padding``, ``image_score``, ...)."""
    model_options: dict = field(default_factory=dict)
    """Other constructor arguments (``--model-arg``, e.g. ``teacher_lr``) given to every model that accepts
    them, for ablations and recipe studies; the models' defaults otherwise."""
    val_blend: tuple[float, float] | None = None
    """Blend factor range of the synthetic validation anomalies (:class:`~anomalib_rdx.data.SyntheticValidation`);
    ``None``: anomalib's split as it is, (0.01, 0.2)."""
    trained_checkpoint: str | None = None
    """Evaluate this checkpoint instead of training, with ``model_options`` and ``inference_options`` (those
    the model takes) overriding its saved constructor arguments."""
    measure_costs: bool = True
    """Time PyTorch inference of the trained checkpoint in a fresh process (latency, peak memory); off for
    quick checks of quality alone (the row then has the parameter count only)."""

    def training_budget(self) -> dict:
        """Lightning trainer arguments of the budget: ``max_minutes``, else ``max_steps`` (> 0), else ``epochs``.

        A step or time budget lifts the epoch limit (Lightning stops at whichever limit comes first).
        """
        budget: dict = {"max_epochs": -1, "max_steps": self.max_steps}
        if self.max_minutes:
            return budget | {"max_time": {"seconds": self.max_minutes * 60}}
        return budget if self.max_steps > 0 else budget | {"max_epochs": self.epochs}


def _teacher_kwargs(config: BenchmarkConfig) -> dict:
    return {
        "backbone": config.backbone,
        "layers": config.layers,
        "backbone_weights": config.backbone_weights,
        "pre_trained": config.backbone_weights is None,
    }


def chosen_options(model_class: type[AnomalibModule], config: BenchmarkConfig) -> dict:
    """Select the ``--model-arg`` values and inference switches of ``config`` that ``model_class`` takes."""
    accepted = inspect.signature(model_class).parameters
    chosen = config.model_options | config.inference_options
    return {key: value for key, value in chosen.items() if key in accepted}


def _build(model_class: type[AnomalibModule], config: BenchmarkConfig, **overrides: object) -> AnomalibModule:
    size = (config.image_size, config.image_size)
    return model_class(
        **_teacher_kwargs(config),
        **chosen_options(model_class, config),
        **overrides,
        pre_processor=model_class.configure_pre_processor(size),
        evaluator=benchmark_evaluator(),
    )


CALIBRATION_KEYS = (".border_calibration.", ".score_calibration.")
"""State-dict parts a checkpoint from before the border calibration lacks (loaded as not fitted)."""

_NO_AUGMENTATION = {
    "color_jitter_probability": 0.0,
    "blur_probability": 0.0,
    "noise_probability": 0.0,
    "anomaly_probability": 0.0,
    "flip_probability": 0.0,
}


MODELS: dict[str, Callable[[BenchmarkConfig], AnomalibModule]] = {
    "RDExpert": lambda config: _build(anomalib_rdx.RDExpert, config),
    "RDExpert-plain": lambda config: _build(anomalib_rdx.RDExpert, config, use_expert=False, gii_mode="off"),
    "RDExpert-noGII": lambda config: _build(anomalib_rdx.RDExpert, config, gii_mode="off"),
    "RDExpert-ungated": lambda config: _build(anomalib_rdx.RDExpert, config, gii_mode="ungated"),
    "AugmentedRD": lambda config: _build(anomalib_rdx.AugmentedRD, config),
    "AugmentedRD-plain": lambda config: _build(anomalib_rdx.AugmentedRD, config, **_NO_AUGMENTATION),
    "DualStudentKD": lambda config: _build(anomalib_rdx.DualStudentKD, config),
    "DualStudentKD-Se": lambda config: _build(anomalib_rdx.DualStudentKD, config, students="encoder"),
    "DualStudentKD-Sd": lambda config: _build(anomalib_rdx.DualStudentKD, config, students="decoder"),
    "DualStudentKD-noDF": lambda config: _build(anomalib_rdx.DualStudentKD, config, df_source="off"),
    "MultiResolutionKD": lambda config: _build(anomalib_rdx.MultiResolutionKD, config),
    "ReverseDistillation": lambda config: stock_reverse_distillation(config, benchmark_evaluator()),
    "Stfpm": lambda config: stock_stfpm(config, benchmark_evaluator()),
    "Patchcore": lambda config: stock_patchcore(config, benchmark_evaluator()),
}
"""Model name -> factory. ``-plain`` variants are plain reverse distillation with the same teacher; the
last three are anomalib's own models."""
DEFAULT_MODELS = [
    "RDExpert",
    "RDExpert-plain",
    "AugmentedRD",
    "AugmentedRD-plain",
    "DualStudentKD",
    "DualStudentKD-Sd",
    "MultiResolutionKD",
    "ReverseDistillation",
    "Stfpm",
    "Patchcore",
]
"""Models run by default: each package model, its plain-RD ablation, and anomalib's stock models."""


def model_class(name: str) -> type[AnomalibModule]:
    """Class of a benchmark model name (``RDExpert-plain`` -> ``anomalib_rdx.RDExpert``, ``Stfpm`` -> anomalib's)."""
    stock = {"ReverseDistillation": ReverseDistillation, "Stfpm": Stfpm, "Patchcore": Patchcore}
    return stock.get(name) or getattr(anomalib_rdx, name.split("-", maxsplit=1)[0])


def load_benchmark_checkpoint(
    name: str, path: Path, image_size: int | None = None, **overrides: object
) -> AnomalibModule:
    """Load a checkpoint written by the benchmark (or by ``anomalib train``) for model ``name``, in eval mode.

    Benchmark checkpoints carry the benchmark's evaluator metrics, which a default model lacks: they are
    loaded leniently, then every network weight is checked to have come from the checkpoint.
    ``overrides`` replace saved constructor arguments (e.g. ``map_reference="expert"``): a new model is
    built with them, the trained model is not changed. ``image_size`` builds the network (and its
    pre-processor) at the benchmark run's square size instead of the model class's default.
    """
    cls = model_class(name)
    if image_size is not None:
        overrides["pre_processor"] = cls.configure_pre_processor((image_size, image_size))
    saved = load_checkpoint(path, cls.checkpoint_safe_globals())["state_dict"]  # data only: refuses code
    model = cls.load_from_checkpoint(path, map_location="cpu", strict=False, **overrides).eval()
    # a checkpoint from before the border calibrations existed loads them as not fitted (BorderCalibration)
    missing = [
        key
        for key in model.state_dict()
        if key.startswith("model.") and key not in saved and not any(part in key for part in CALIBRATION_KEYS)
    ]
    if missing:
        msg = f"{path} is not a {name} checkpoint of this architecture: it lacks {missing[:3]}."
        raise ValueError(msg)
    if "border_calibration" in overrides:  # the checkpoint carries its own switch; the override decides here
        model.model.border_calibration.switch(bool(overrides["border_calibration"]))
    return model


def benchmark_evaluator() -> Evaluator:
    """Anomalib's default test metrics plus PRO (AUPRO up to 30% false-positive rate); AUROCs on validation.

    The validation metrics (``val_`` prefix: synthetic anomalies of held-out training images) read the
    networks' raw scores, hence :class:`~anomalib_rdx.components.ScoreAUROC`; they feed the learning
    curve (:class:`~anomalib_rdx.benchmark.per_type.LearningCurve`).
    """
    return Evaluator(
        val_metrics=[
            ScoreAUROC(fields=["pred_score", "gt_label"], prefix="val_image_"),
            ScoreAUROC(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False),
        ],
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        ],
    )


class TestScoreRecorder(ServedTestBatches):
    """Keep every test image's path, label, raw score and the score and label anomalib's post-processor gives it.

    ``pred_score`` is the network's score (before normalisation); ``normalized_score`` and ``pred_label``
    are what the model serves (read after the post-processor, see
    :class:`~anomalib_rdx.components.served.ServedTestBatches`).
    """

    def reset(self) -> None:
        """Start empty (one test run)."""
        self.rows: list[dict] = []
        self._arrived_rows: list[dict] = []

    def arrived(self, outputs: Any) -> None:
        """Record the batch's raw scores."""
        self._arrived_rows = [
            {"image_path": str(path), "gt_label": int(label), "pred_score": float(score)}
            for path, label, score in zip(outputs.image_path, outputs.gt_label, outputs.pred_score, strict=True)
        ]
        self.rows.extend(self._arrived_rows)

    def read(self, outputs: Any) -> None:
        """Complete the batch's rows with its served scores and labels."""
        labels = outputs.pred_label if outputs.pred_label is not None else [None] * len(self._arrived_rows)
        for row, score, label in zip(self._arrived_rows, outputs.pred_score, labels, strict=True):
            row["normalized_score"] = float(score)
            row["pred_label"] = "" if label is None else int(bool(label))

    def write(self, path: Path) -> None:
        """Write the recorded scores as CSV."""
        self.flush()
        _write_csv(self.rows, path)


class BenchmarkTimer(TimerCallback):
    """Anomalib's :class:`~anomalib.callbacks.TimerCallback` that also keeps what it logs.

    ``train_seconds`` is the wall-clock of ``fit`` (validation runs included, as in a ``max_time``
    budget), ``test_seconds`` that of the last ``test``; both stay 0 for a phase that did not run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds = 0.0
        self.test_seconds = 0.0

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keep the training time, then log it as anomalib does."""
        self.train_seconds = time.time() - self.start
        super().on_fit_end(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keep the testing time, then log it and the throughput as anomalib does."""
        self.test_seconds = time.time() - self.start
        super().on_test_end(trainer, pl_module)


def benchmark_datamodule(config: BenchmarkConfig) -> MVTecAD:
    """Build the benchmark's seeded data: synthetic validation split of held-out training images, whole test split."""
    seed_everything(config.seed, workers=True)
    return MVTecAD(
        root=config.root,
        category=config.category,
        train_batch_size=config.train_batch_size,
        eval_batch_size=config.eval_batch_size,
        num_workers=config.num_workers,
        val_split_mode="synthetic",
        val_split_ratio=config.val_split_ratio,
        seed=config.seed,
    )


def validation_split(val_blend: tuple[float, float] | None, seed: int) -> list[Callback]:
    """Return the callback re-making the synthetic validation split at ``val_blend`` (none: anomalib's split)."""
    return [SyntheticValidation(val_blend, seed=seed)] if val_blend else []


def add_val_blend_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--val-blend LOW HIGH``, shared by the benchmark and the studies that choose on validation."""
    parser.add_argument(
        "--val-blend",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="re-make the synthetic validation anomalies from the same held-out images, blended at a factor in "
        "[LOW, HIGH] (SyntheticValidation; e.g. 0.1 1.0); default: anomalib's split, blended at 0.01-0.2",
    )


def parsed_val_blend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, float] | None:
    """``--val-blend`` as a checked range, or ``None``; a bad range ends the command with its name."""
    if not args.val_blend:
        return None
    try:
        return check_blend_factor(args.val_blend)
    except ValueError as error:
        parser.error(f"--val-blend: {error}")


def run_one(name: str, config: BenchmarkConfig, output: Path) -> dict:
    """Train and test one model; return its row of results."""
    datamodule = benchmark_datamodule(config)
    try:
        if config.trained_checkpoint:
            model = load_benchmark_checkpoint(
                name,
                Path(config.trained_checkpoint),
                config.image_size,
                evaluator=benchmark_evaluator(),
                **chosen_options(model_class(name), config),
            )
        else:
            model = MODELS[name](config)
    except ModelSkipped as skipped:
        logger.warning("%s skipped: %s", name, skipped)
        return {"model": name, "seed": config.seed, "status": "skipped", "reason": str(skipped)}
    folder = output / name / f"seed{config.seed}"
    folder.mkdir(parents=True, exist_ok=True)  # nothing else may create it (no heat maps, no checkpoint saved)
    recorder, per_type, learning_curve = TestScoreRecorder(), PerDefectTypeMetrics(), LearningCurve()
    decisions, timer = DecisionRecorder(), BenchmarkTimer()
    validation = (
        {"val_check_interval": config.val_check_interval, "check_val_every_n_epoch": None}
        if config.val_check_interval
        else {}
    )
    engine = Engine(
        callbacks=[
            *validation_split(config.val_blend, config.seed),
            recorder,
            per_type,
            learning_curve,
            decisions,
            timer,
        ],
        **config.training_budget(),
        **validation,
        default_root_dir=folder,
        logger=False,
        enable_progress_bar=True,
        accelerator="auto",
        devices=1,
    )
    if config.trained_checkpoint:  # inference switches change the maps: refit thresholds on validation
        engine.validate(model=model, datamodule=datamodule, verbose=False)
    else:
        engine.fit(model=model, datamodule=datamodule)
    (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    train_seconds, test_seconds = timer.train_seconds, timer.test_seconds  # before a re-test (MKD) resets them
    # now: a later re-test (MultiResolutionKD's gradient map) resets them
    decision_figures, per_type_figures = decisions.metrics(), per_type.compute()
    recorder.write(folder / "test_scores.csv")
    _write_csv(learning_curve.rows, folder / "learning_curve.csv")
    if config.trained_checkpoint:  # the evaluated model, switches included (its latency is measured)
        checkpoint = save_model_checkpoint(model, folder / "evaluated.ckpt")
    else:
        checkpoint = next(folder.rglob("*.ckpt"))
    datamodule.setup("test")
    extra = {}
    if isinstance(model, anomalib_rdx.MultiResolutionKD):
        # The paper's gradient map: a second model with the trained weights (the trained model stays as
        # built); fit anomalib's normalisation to its maps on validation, then test.
        gradient_model = anomalib_rdx.MultiResolutionKD(
            **{**model.hparams, "localization": "gradient"},
            pre_processor=anomalib_rdx.MultiResolutionKD.configure_pre_processor((config.image_size,) * 2),
            evaluator=benchmark_evaluator(),
        )
        gradient_model.model.load_state_dict(model.model.state_dict())
        engine.validate(model=gradient_model, datamodule=datamodule, verbose=False)
        (gradient_metrics,) = engine.test(model=gradient_model, datamodule=datamodule, verbose=False)
        extra = {f"{metric}_gradient": float(gradient_metrics[metric]) for metric in ("pixel_AUROC", "pixel_AUPRO")}
    row = {
        "model": name,
        "seed": config.seed,
        "status": "ok",
        **{metric: float(metrics[metric]) for metric in METRICS},
        **per_type_figures,
        **decision_figures,
        "train_seconds": round(train_seconds, 1),
        "train_steps": engine.trainer.global_step,
        "epochs_trained": engine.trainer.current_epoch,
        "parameters": inference_parameters(model),
        **(inference_costs(model, checkpoint, config) if config.measure_costs else {}),
        "test_seconds": round(test_seconds, 1),
        "test_images": len(datamodule.test_data),
        "train_images": len(datamodule.train_data),
        **extra,
        # Relative to the output folder: the notebooks read scores and reload the model from them.
        "test_scores": str((folder / "test_scores.csv").relative_to(output)),
        "learning_curve": str((folder / "learning_curve.csv").relative_to(output)),
        "checkpoint": str(checkpoint.relative_to(output)),
    }
    logger.info("%s", row)
    return row


def inference_costs(model: AnomalibModule, checkpoint: Path, config: BenchmarkConfig) -> dict:
    """Per-image latency (batch 1 and 16) and peak memory of PyTorch inference.

    The trained checkpoint is read (as data only) in a fresh process and its whole inference pipeline
    (pre-processor, network, post-processor: what anomalib's torch export holds) is timed there (median of
    10 runs after 3 warm-up runs).
    """
    costs: dict[str, float] = {}
    for batch in LATENCY_BATCHES:
        figures = measure_latency(checkpoint, "torch", batch, config.image_size, model_class=type(model))
        costs[f"latency_ms_per_image_b{batch}"] = round(figures["latency_ms"] / batch, 2)
        costs[f"peak_inference_rss_mib_b{batch}"] = round(figures["peak_rss_mib"], 1)
    return costs


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each model's metrics and costs."""
    summary = []
    for name in dict.fromkeys(row["model"] for row in rows):
        runs = [row for row in rows if row["model"] == name and row.get("status") == "ok"]
        if not runs:
            skipped = next(row for row in rows if row["model"] == name)
            summary.append({"model": name, "status": "skipped", "reason": skipped.get("reason", "")})
            continue
        entry: dict = {"model": name, "status": "ok", "seeds": len(runs)}
        for column in (*METRICS, *(f"mean_per_type_{name}" for name in PER_TYPE_METRICS), *COST_COLUMNS):
            values = [float(run[column]) for run in runs if column in run]
            if not values:
                continue
            mean = sum(values) / len(values)
            spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            entry[f"{column}_mean"] = round(mean, 4)
            entry[f"{column}_std"] = round(spread, 4)
        summary.append(entry)
    return summary


def _write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as file:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(file, fieldnames=fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_results(rows: list[dict], config: dict, output: Path) -> None:
    """Write ``results.json`` (rows, summary, configuration, versions), ``results.csv`` and ``summary.csv``."""
    output.mkdir(parents=True, exist_ok=True)
    environment = {
        "anomalib_rdx": anomalib_rdx.__version__,
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        **cpu_description(),
    }
    write_document({"config": config, "environment": environment, "results": rows}, output)


def write_document(document: dict, output: Path) -> None:
    """Add the summary to ``document`` (config, environment, results); write it as JSON and its rows as CSV."""
    output.mkdir(parents=True, exist_ok=True)
    document["summary"] = summarize(document["results"])
    (output / "results.json").write_text(json.dumps(document, indent=2))
    _write_csv(document["results"], output / "results.csv")
    _write_csv(document["summary"], output / "summary.csv")


def _inference_options(args: argparse.Namespace) -> dict:
    """Collect the inference switches set away from the papers' values on the command line."""
    options: dict = {}
    if args.border_padding:
        options["border_padding"] = args.border_padding
    if args.border_calibration:
        options["border_calibration"] = True
    if args.image_score is not None:
        options["image_score"] = args.image_score
    if args.map_reference is not None:
        options["map_reference"] = args.map_reference
    if args.test_time_flips != "none":
        options["test_time_flips"] = args.test_time_flips
        options["flip_scope"] = args.flip_scope
    return options


def model_argument(value: str, option: str = "--model-arg") -> tuple[str, object]:
    """``KEY=VALUE`` of a constructor argument given on the command line.

    The value is ``true``/``false``/``none`` in any case, else a Python literal (``1e-5``, ``16``,
    ``(0.5, 0.999)``), else the text itself (``off``, ``expert``). Not YAML: YAML 1.1 reads ``off`` (a
    ``gii_mode``) as ``False`` and ``1e-5`` as a string.
    """
    key, separator, text = value.partition("=")
    if not separator or not key.isidentifier():
        msg = f"{option} expects KEY=VALUE with a constructor argument name as KEY, got {value!r}."
        raise argparse.ArgumentTypeError(msg)
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return key, words[text.lower()]
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text


def _check_model_arguments(parser: argparse.ArgumentParser, options: dict, names: list[str]) -> None:
    """Refuse a ``--model-arg`` that none of the chosen models accepts (a typo would otherwise be ignored)."""
    for key in options:
        if not any(key in inspect.signature(model_class(name)).parameters for name in names):
            parser.error(f"--model-arg {key}: none of the models {names} takes an argument named {key!r}.")


def _data_folder(value: str) -> tuple[str, str]:
    folder = Path(value)
    if not folder.is_dir():
        msg = f"--data expects an MVTec-layout category folder (with train/good and test/), got {value!r}."
        raise argparse.ArgumentTypeError(msg)
    return str(folder.resolve().parent), folder.name


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark",
        description="Train and test models under one protocol on an MVTec-layout folder; write results.json/csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        choices=list(MODELS),
        metavar="NAME",
        help=f"models to run, from: {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--data",
        type=_data_folder,
        help="an MVTec-layout category folder (train/good, test/<defect>, ground_truth/<defect>); "
        "replaces --root and --category",
    )
    parser.add_argument("--root", default=defaults.root, help="parent folder of the MVTec-layout category folder")
    parser.add_argument("--category", default=defaults.category, help="category folder under --root")
    parser.add_argument("--backbone", default=defaults.backbone, help="timm CNN of every teacher")
    parser.add_argument(
        "--layers",
        nargs="+",
        default=defaults.layers,
        type=lambda v: int(v) if v.isdigit() else v,
        help="teacher levels (module names or features_only indices)",
    )
    parser.add_argument("--backbone-weights", default=defaults.backbone_weights, help="'none' to download from timm")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="square input size")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs per model")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="training steps (overrides epochs)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=defaults.max_minutes,
        help="wall-clock training budget per model in minutes (overrides --epochs; validation runs count)",
    )
    parser.add_argument(
        "--val-check-interval",
        type=int,
        default=defaults.val_check_interval,
        help="validate every N training steps (learning-curve points); default: every epoch",
    )
    parser.add_argument("--train-batch-size", type=int, default=defaults.train_batch_size, help="training batch")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="data-loading workers")
    parser.add_argument("--seeds", nargs="+", type=int, default=[defaults.seed], help="one run per seed and model")
    parser.add_argument(
        "--patchcore-coreset-ratio",
        type=float,
        default=defaults.patchcore_coreset_ratio,
        help="share of patch features PatchCore keeps (greedy selection: its time grows with this share "
        "times the number of training patches)",
    )
    parser.add_argument(
        "--border-padding",
        type=int,
        default=0,
        help="package models: pixels mirrored around the image at inference (0: the papers')",
    )
    parser.add_argument(
        "--border-calibration",
        action="store_true",
        help="package models of the RD family: standardise the map per distance to the image border with the "
        "normal validation images' statistics (off: the papers' map)",
    )
    parser.add_argument(
        "--image-score",
        choices=["max", "top_k_mean", "discrepancy"],
        default=None,
        help="package models: image score (max or top_k_mean of the map; MultiResolutionKD also discrepancy, "
        "its paper's); default: each model's",
    )
    parser.add_argument(
        "--map-reference",
        choices=["teacher", "expert", "both"],
        default=None,
        help="RDExpert: features the student is compared with at inference (teacher: the paper's; default: "
        "the model's, both)",
    )
    parser.add_argument(
        "--test-time-flips",
        choices=list(FLIP_VIEWS),
        default="none",
        help="package models of the RD family: average the maps of the image and its mirror images at "
        "inference (none: the papers'; one network pass per view)",
    )
    parser.add_argument(
        "--flip-scope",
        choices=list(FLIP_SCOPES),
        default="map",
        help="with --test-time-flips: average the served map only (the image score stays the image's own) or "
        "read the image score from the averaged map too",
    )
    parser.add_argument(
        "--trained-checkpoint",
        default=None,
        help="evaluate this checkpoint of the one --models entry (no training), with the inference switches "
        "above and any --model-arg as overrides; thresholds are refitted on the validation split",
    )
    parser.add_argument(
        "--model-arg",
        type=model_argument,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor argument for every chosen model that takes it (repeatable), e.g. teacher_lr=1e-5",
    )
    parser.add_argument(
        "--no-costs",
        action="store_true",
        help="skip timing each trained model's PyTorch inference (latency and peak memory columns) for a quicker run",
    )
    add_val_blend_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("results/benchmark"), help="results folder")
    args = parser.parse_args(argv)
    val_blend = parsed_val_blend(parser, args)
    model_options = dict(args.model_arg)
    _check_model_arguments(parser, model_options, args.models)
    root, category = args.data if args.data else (args.root, args.category)
    rows: list[dict] = []
    runs = [(seed, name) for seed in args.seeds for name in args.models]
    for seed, name in tqdm(runs, desc="benchmark runs", unit="model"):
        config = BenchmarkConfig(
            root=root,
            category=category,
            backbone=args.backbone,
            layers=args.layers,
            backbone_weights=None if str(args.backbone_weights).lower() == "none" else args.backbone_weights,
            image_size=args.image_size,
            epochs=args.epochs,
            max_steps=args.max_steps,
            max_minutes=args.max_minutes,
            val_check_interval=args.val_check_interval,
            train_batch_size=args.train_batch_size,
            num_workers=args.num_workers,
            seed=seed,
            patchcore_coreset_ratio=args.patchcore_coreset_ratio,
            inference_options=_inference_options(args),
            model_options=model_options,
            val_blend=val_blend,
            trained_checkpoint=args.trained_checkpoint,
            measure_costs=not args.no_costs,
        )
        rows.append(run_one(name, config, args.output))
        write_results(rows, asdict(config) | {"seeds": args.seeds, "models": args.models}, args.output)
    for entry in summarize(rows):
        print(" ".join(f"{key}={value}" for key, value in entry.items()))


if __name__ == "__main__":
    main()
