r"""Serve an exported OpenVINO model on a folder of images: heat maps and scores.

``anomalib predict`` serves Lightning checkpoints; this command serves what ``anomalib export
--export_type openvino`` wrote, with anomalib's ``OpenVINOInferencer`` and its visualiser, on a machine
that needs neither the training code nor a GPU. For every image it writes ``<output>/<name>.png`` (the
image with the anomaly map and predicted mask overlaid) and one row of ``<output>/scores.csv``
(normalised score in ``[0, 1]`` and label, anomalib's threshold at 0.5).

Example:
    anomalib-rdx-predict --model exported/weights/openvino/model.xml \\
        --images anomalib_rdx/data/sample/magnetic_tile/test/crack --output predictions
"""

import argparse
import csv
import os
from pathlib import Path

from anomalib.data.utils import get_image_filenames
from anomalib.deploy import OpenVINOInferencer
from anomalib.visualization.image.item_visualizer import visualize_image_item

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def load_inferencer(model: Path, device: str = "CPU", precision_hint: dict | None = None) -> OpenVINOInferencer:
    """Load anomalib's OpenVINO inferencer for an exported ``model.xml``, with a clear error when it is missing.

    Args:
        model: Path to the exported ``.xml`` (its ``.bin`` beside it).
        device: OpenVINO device.
        precision_hint: OpenVINO config; ``None`` for FP32 execution (``INFERENCE_PRECISION_HINT=f32``:
            CPUs with AMX/AVX512-BF16 would otherwise run FP32 IRs in bfloat16). ``{}`` for the plugin's
            own default.
    """
    model = Path(model)
    if model.suffix != ".xml" or not model.is_file() or not model.with_suffix(".bin").is_file():
        msg = f"No exported OpenVINO model at {model} (expected model.xml with model.bin beside it)."
        raise FileNotFoundError(msg)
    return OpenVINOInferencer(path=model, device=device, config=FP32 if precision_hint is None else precision_hint)


def predict_folder(inferencer: OpenVINOInferencer, images: Path, output: Path) -> list[dict]:
    """Predict every image of ``images``; write heat-map overlays and ``scores.csv`` to ``output``.

    Raises:
        FileNotFoundError: When ``images`` holds no image.
        ValueError: Naming the file, when an image cannot be read.
    """
    try:
        paths = sorted(get_image_filenames(images))
    except ValueError as error:
        msg = f"No images to predict in {images}: {error}"
        raise FileNotFoundError(msg) from error
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
        with (output / "scores.csv").open("w", newline="") as file:  # rewritten each image: nothing is lost
            writer = csv.DictWriter(file, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``anomalib-rdx-predict``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model.xml")
    parser.add_argument("--images", type=Path, required=True, help="image file or folder of images")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--device", default="CPU")
    args = parser.parse_args(argv)
    # OpenVINOInferencer writes openvino_cache/ in the working directory: keep it with the output.
    args.output.mkdir(parents=True, exist_ok=True)
    model, images, output = args.model.resolve(), args.images.resolve(), args.output.resolve()
    previous = Path.cwd()
    os.chdir(output)
    try:
        inferencer = load_inferencer(model, args.device)
        rows = predict_folder(inferencer, images, output)
    finally:
        os.chdir(previous)
    for row in rows:
        print(f"{row['image']}\tscore={row['pred_score']:.4f}\tlabel={row['pred_label']}")


if __name__ == "__main__":
    main()
