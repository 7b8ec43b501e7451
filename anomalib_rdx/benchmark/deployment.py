r"""Edge deployment benchmark: PyTorch eager vs OpenVINO FP32 vs OpenVINO INT8.

``python -m anomalib_rdx.benchmark.deployment`` exports every model with anomalib's ``Engine.export``
three ways: the PyTorch module (``.pt``), an OpenVINO FP32 IR, and an OpenVINO INT8 IR quantised by
NNCF post-training quantisation (anomalib's ``CompressionType.INT8_PTQ``) calibrated on **training
images only** (``MVTecAD(val_split_mode="from_train")``: the calibration loader holds normal training
images that the model was not trained on). It then reports, per model:

- ``parameters``: parameters of the exported inference graph (training-only networks such as
  RDExpert's expert are not in it), and the size of each IR's ``.bin``;
- latency at ``--image-size`` for batch sizes ``--batch-sizes`` (median over ``--repeats`` runs after
  ``--warmup`` runs, each runtime in a fresh process), throughput and the peak resident memory of
  that process (an OpenVINO process imports neither torch nor anomalib);
- with ``--checkpoint NAME=PATH``: image and pixel AUROC of the three runtimes on the whole test split
  of ``--root/--category`` (anomalib's normalised outputs, exactly what each runtime serves).

Without a checkpoint a model is built untrained: latency and size do not depend on the weights, so
this also covers anomalib's stock ``ReverseDistillation``, which cannot use the EfficientNet teacher
(its decoder is ResNet-only) and runs as ``ReverseDistillation-stock`` with its default
wide_resnet50_2 at random weights.

A benchmark checkpoint of anomalib's ``Patchcore`` (``--checkpoint Patchcore=PATH``, same teacher) is the
reference row: its memory bank is its training, so it needs a checkpoint. anomalib exports it at a
static batch of 2 (its graph fixes the batch), so it is exported once per measured batch size, its INT8 is
anomalib's own ``INT8_PTQ`` (every quantisable operation), and its AUROCs are measured at batch 1.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX512-BF16 the CPU plugin
otherwise executes FP32 IRs in bfloat16.

Example:
    OMP_NUM_THREADS=2 python -m anomalib_rdx.benchmark.deployment --output results/deployment \\
        --checkpoint RDExpert=path/to/model.ckpt
"""

import argparse
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from anomalib.metrics import AUROC
from anomalib.models import ReverseDistillation
from anomalib.models.components import AnomalibModule
from torch.nn import functional as F  # noqa: N812
from torchvision import tv_tensors
from torchvision.transforms.v2 import Resize
from tqdm import tqdm

import anomalib_rdx

from .accuracy import load_benchmark_checkpoint, write_results
from .measure import DataAndTeacher, inference_parameters, measure_latency, save_model_checkpoint

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino_fp32", "openvino_int8")
# Models built untrained for latency and size; name -> (class, constructor arguments beyond the teacher).
LATENCY_MODELS: dict[str, tuple[type[AnomalibModule], dict]] = {
    "RDExpert": (anomalib_rdx.RDExpert, {}),
    "AugmentedRD": (anomalib_rdx.AugmentedRD, {}),
    "DualStudentKD": (anomalib_rdx.DualStudentKD, {}),
    "MultiResolutionKD": (anomalib_rdx.MultiResolutionKD, {}),
    "ReverseDistillation-stock": (ReverseDistillation, {}),
}


@dataclass
class DeploymentConfig(DataAndTeacher):
    """What every model of one deployment run shares."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    warmup: int = 3
    repeats: int = 10
    calibration_ratio: float = 0.5
    eval_batch_size: int = 8


def calibration_datamodule(config: DeploymentConfig) -> MVTecAD:
    """Datamodule whose validation loader holds held-out *training* images (NNCF's calibration set).

    Images are resized to the model's input size by the datamodule, so the test loader also serves
    :func:`runtime_metrics`.
    """
    return MVTecAD(
        root=config.root,
        category=config.category,
        eval_batch_size=config.eval_batch_size,
        num_workers=0,
        augmentations=Resize((config.image_size, config.image_size), antialias=True),
        val_split_mode="from_train",
        val_split_ratio=config.calibration_ratio,
        seed=0,
    )


def build_untrained(name: str, config: DeploymentConfig) -> AnomalibModule:
    """Build a model of ``LATENCY_MODELS`` with the configured teacher (random weights for stock RD).

    An untrained model has no normalisation statistics (anomalib's post-processor would divide by an
    empty range, which OpenVINO rejects in the INT8 graph), so it is built without post-processor: its
    graph lacks anomalib's few element-wise normalisation operations, nothing else. RDExpert's teacher is
    moved off its expert (an untrained one is the expert's copy, which OpenVINO would compute once).
    """
    model_class, overrides = LATENCY_MODELS[name]
    size = (config.image_size, config.image_size)
    pre_processor = model_class.configure_pre_processor(size)
    if model_class is ReverseDistillation:
        return ReverseDistillation(pre_trained=False, pre_processor=pre_processor, post_processor=False)
    model = model_class(
        post_processor=False,
        backbone=config.backbone,
        layers=config.layers,
        backbone_weights=config.backbone_weights,
        pre_trained=config.backbone_weights is None,
        pre_processor=pre_processor,
        **overrides,
    )
    if isinstance(model, anomalib_rdx.RDExpert) and model.use_expert:
        # Untrained, RDExpert's teacher is its expert's copy, and OpenVINO computes the two identical
        # networks once: move the teacher as training does, so the graph holds both, as a trained one.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.model.teacher.parameters():
                parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator))
    return model


def export_all(
    model: AnomalibModule, export_root: Path, datamodule: MVTecAD, image_size: int, batch: int | None = None
) -> dict[str, Path]:
    """Write the PyTorch checkpoint, FP32 IR and INT8 IR (``Engine.export``) of ``model``; return their paths.

    PyTorch is timed from a checkpoint read as data only, not from anomalib's ``.pt`` torch export, whose
    loading unpickles a module (runs code). ``batch`` exports the IRs at that static batch size (anomalib's
    default: a dynamic batch). The INT8 IR is calibrated with batches of the FP32 IR's static batch size,
    where it has one.
    """
    engine = Engine(logger=False, default_root_dir=export_root, accelerator="cpu", devices=1)
    size = (image_size, image_size)
    artifacts = {"torch": save_model_checkpoint(model, export_root / "torch" / "model.ckpt")}
    onnx_kwargs = {"dynamic_shapes": ({0: batch},)} if batch else None
    fp32 = engine.export(
        model, ExportType.OPENVINO, export_root=export_root / "openvino_fp32", input_size=size, onnx_kwargs=onnx_kwargs
    )
    artifacts["openvino_fp32"] = fp32
    fixed = static_batch(fp32)
    if fixed is None:
        artifacts["openvino_int8"] = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=export_root / "openvino_int8",
            input_size=size,
            compression_type=CompressionType.INT8_PTQ,
            datamodule=datamodule,
            onnx_kwargs=onnx_kwargs,
        )
    else:
        artifacts["openvino_int8"] = quantize_static_batch(fp32, datamodule, fixed, export_root / "openvino_int8")
    return artifacts


def quantize_static_batch(fp32: Path, datamodule: MVTecAD, batch: int, export_root: Path) -> Path:
    """Quantise an IR of static batch size ``batch`` as anomalib's ``INT8_PTQ`` does (NNCF's defaults); return its path.

    anomalib 2.7 cannot calibrate such an IR from a datamodule whose batches differ (its
    ``_post_training_quantization_ov`` sets the training batch size, then reads the validation loader,
    and a last partial batch never fits): here the calibration images come in full batches of ``batch``.
    """
    import nncf
    import openvino as ov

    datamodule.setup("fit")
    datamodule.eval_batch_size = batch
    batches = [item.image for item in datamodule.val_dataloader() if len(item.image) == batch]
    quantized = nncf.quantize(ov.Core().read_model(fp32), nncf.Dataset(batches))
    path = export_root / "model.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, path)
    return path


def static_batch(xml: Path) -> int | None:
    """Return the batch size an OpenVINO IR was exported at, or ``None`` where its batch is dynamic."""
    import openvino as ov

    batch = ov.Core().read_model(xml).input(0).partial_shape[0]
    return batch.get_length() if batch.is_static else None


def _runtime_predictors(model: AnomalibModule, artifacts: dict[str, Path]) -> dict[str, Callable]:
    """``images (B, 3, H, W) -> (scores (B,), maps (B, h, w))`` for each artifact (``h, w``: the model's map size).

    ``"torch"`` runs ``model`` itself (always included); every other entry is an OpenVINO IR (``.xml``).
    """
    import openvino as ov

    core = ov.Core()

    def torch_predict(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            output = model(images)
        anomaly_map = output.anomaly_map.numpy()
        return output.pred_score.numpy().ravel(), anomaly_map.reshape(len(images), *anomaly_map.shape[-2:])

    def openvino_predict(xml: Path) -> Callable:
        compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def predict(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            output = compiled(images.numpy())
            scores = output[compiled.output("pred_score")].ravel()
            anomaly_map = output[compiled.output("anomaly_map")]
            maps = anomaly_map.reshape(len(images), *anomaly_map.shape[-2:])
            return scores, maps

        return predict

    return {"torch": torch_predict} | {
        runtime: openvino_predict(path) for runtime, path in artifacts.items() if runtime != "torch"
    }


def runtime_metrics(model: AnomalibModule, artifacts: dict[str, Path], batches: Iterable) -> dict[str, float]:
    """Image and pixel AUROC (anomalib's metric) of each artifact on ``batches`` (images, labels, masks).

    ``artifacts`` maps a runtime name to an OpenVINO IR; ``model`` itself runs as ``"torch"``. The metrics
    are named ``image_AUROC_<runtime>`` and ``pixel_AUROC_<runtime>``.

    Masks go through the model's own pre-processor (its resize, nearest for masks) and, where a network
    scores at its own size (MultiResolutionKD: 128x128 inside a graph fed 256x256 images), are resized
    (nearest) to the maps' size, the same for every runtime.
    """
    predictors = _runtime_predictors(model, artifacts)
    image_auroc = {runtime: AUROC(fields=["pred_score", "gt_label"]) for runtime in predictors}
    pixel_auroc = {runtime: AUROC(fields=["anomaly_map", "gt_mask"]) for runtime in predictors}
    for batch in batches:
        masks = model.pre_processor.transform(tv_tensors.Mask(batch.gt_mask))
        for runtime, predict in predictors.items():
            batch_scores, batch_maps = predict(batch.image)
            maps = torch.from_numpy(np.ascontiguousarray(batch_maps, dtype=np.float32))
            image_auroc[runtime].update(
                SimpleNamespace(pred_score=torch.from_numpy(batch_scores.astype(np.float32)), gt_label=batch.gt_label)
            )
            map_masks = masks.reshape(maps.shape[0], 1, *masks.shape[-2:]).float()
            if map_masks.shape[-2:] != maps.shape[-2:]:
                map_masks = F.interpolate(map_masks, size=maps.shape[-2:], mode="nearest")
            pixel_auroc[runtime].update(SimpleNamespace(anomaly_map=maps, gt_mask=map_masks.reshape(maps.shape).int()))
    metrics = {}
    for runtime in predictors:
        metrics[f"image_AUROC_{runtime}"] = float(image_auroc[runtime].compute())
        metrics[f"pixel_AUROC_{runtime}"] = float(pixel_auroc[runtime].compute())
    return metrics


def run_one(
    name: str,
    config: DeploymentConfig,
    output: Path,
    checkpoint: Path | None = None,
    progress: tqdm | None = None,
) -> dict:
    """Export one model three ways and measure it; its row of results."""
    model = load_benchmark_checkpoint(name, checkpoint) if checkpoint else build_untrained(name, config)
    model.eval()
    datamodule = calibration_datamodule(config)
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = export_all(model, Path(scratch), datamodule, config.image_size)
        # A graph that anomalib exports at a static batch (its PatchCore: 2, the example input's size) is
        # exported again at every measured batch size; AUROC is then measured at batch 1.
        static = static_batch(artifacts["openvino_fp32"]) is not None
        per_batch = {
            batch: export_all(model, Path(scratch) / f"batch{batch}", datamodule, config.image_size, batch)
            for batch in (sorted({1, *config.batch_sizes}) if static else [])
        }
        if static:
            artifacts = per_batch[1]
        row: dict = {
            "model": name,
            "trained": checkpoint is not None,
            "parameters": inference_parameters(model),
            "ir_fp32_mib": round(artifacts["openvino_fp32"].with_suffix(".bin").stat().st_size / 2**20, 2),
            "ir_int8_mib": round(artifacts["openvino_int8"].with_suffix(".bin").stat().st_size / 2**20, 2),
            "calibration_images": len(datamodule.val_data),
            "static_batch": static,
        }
        for runtime in RUNTIMES:
            for batch in config.batch_sizes:
                artifact = per_batch[batch][runtime] if static else artifacts[runtime]
                figures = measure_latency(
                    artifact, runtime, batch, config.image_size, config.warmup, config.repeats, type(model)
                )
                row[f"latency_ms_b{batch}_{runtime}"] = round(figures["latency_ms"], 2)
                row[f"images_per_s_b{batch}_{runtime}"] = round(figures["images_per_second"], 2)
                row[f"peak_rss_mib_b{batch}_{runtime}"] = round(figures["peak_rss_mib"], 1)
                if progress is not None:
                    progress.update()
        if checkpoint is not None:
            datamodule.eval_batch_size = 1 if static else config.eval_batch_size
            datamodule.setup("test")
            row.update(runtime_metrics(model, artifacts, datamodule.test_dataloader()))
            row["test_images"] = len(datamodule.test_data)
            for metric in ("image_AUROC", "pixel_AUROC"):
                row[f"{metric}_int8_minus_fp32"] = round(
                    row[f"{metric}_openvino_int8"] - row[f"{metric}_openvino_fp32"], 4
                )
    output.mkdir(parents=True, exist_ok=True)
    logger.info("%s", row)
    return row


def checkpoint_argument(value: str) -> tuple[str, Path]:
    """Parse a ``NAME=PATH`` command-line value; the file must exist."""
    name, _, path = value.partition("=")
    if not path or not Path(path).is_file():
        msg = f"--checkpoint expects NAME=PATH to an existing checkpoint file, got {value!r}."
        raise argparse.ArgumentTypeError(msg)
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    defaults = DeploymentConfig()
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.deployment",
        description="Export models as PyTorch checkpoint, OpenVINO FP32 and INT8; measure latency, memory and AUROC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", nargs="*", default=list(LATENCY_MODELS), help="untrained models (latency/size)")
    parser.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        type=checkpoint_argument,
        help="NAME=PATH of trained package models or of anomalib's Patchcore (also measures AUROC per runtime)",
    )
    parser.add_argument("--root", default=defaults.root, help="parent folder of the MVTec-layout category folder")
    parser.add_argument("--category", default=defaults.category)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=defaults.batch_sizes)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--output", type=Path, default=Path("results/deployment"))
    args = parser.parse_args(argv)
    config = DeploymentConfig(
        root=args.root,
        category=args.category,
        image_size=args.image_size,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    jobs = [(name, None) for name in args.models] + list(args.checkpoint)
    rows = []
    with tqdm(total=len(jobs) * len(RUNTIMES) * len(config.batch_sizes), desc="latency runs") as progress:
        for name, checkpoint in jobs:
            rows.append(run_one(name, config, args.output, checkpoint, progress))
            write_results(rows, asdict(config), args.output)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
