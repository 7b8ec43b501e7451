r"""Serve an exported OpenVINO model on a folder of images: heat maps and scores, for a production line.

``anomalib predict`` serves Lightning checkpoints; this command serves what ``anomalib export
--export_type openvino`` wrote, on a machine that needs neither the training code nor a GPU. Images are
read and pre-processed as anomalib's ``OpenVINOInferencer`` does and scored by OpenVINO's asynchronous
inference (``AsyncInferQueue`` with the ``THROUGHPUT`` hint: as many requests in flight as the CPU has
streams), while a writer thread draws each overlay with anomalib's visualiser. For every image it writes
``<output>/<name>.png`` (the image with the anomaly map and predicted mask overlaid) and appends one row,
in the folder's order, to ``<output>/scores.csv`` (normalised score in ``[0, 1]`` and label, anomalib's
threshold at 0.5; header once, each row flushed). At the end it prints the images per second.

An image that cannot be read (a truncated PNG, a text file named ``.png``) is named on stderr and gets a
row with its error instead of a score; the rest of the folder is still scored and the command exits
with status 1.

Precision: FP32 IRs run with ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU plugin otherwise runs them
in bfloat16 on CPUs with AMX or AVX512-BF16), unless the IR's runtime info names another precision
(``runtime_options/INFERENCE_PRECISION_HINT``).

Example:
    anomalib-rdx-predict --model exported/weights/openvino/model.xml \\
        --images anomalib_rdx/data/sample/magnetic_tile/test/crack --output predictions
"""

import argparse
import contextlib
import csv
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from anomalib.data import NumpyImageBatch
from anomalib.data.utils import get_image_filenames, read_image
from anomalib.deploy import OpenVINOInferencer
from anomalib.visualization.image.item_visualizer import visualize_image_item

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
PRECISION_RT_INFO = ("runtime_options", "INFERENCE_PRECISION_HINT")
"""Where an IR may name the precision it was validated at (OpenVINO's runtime-options section)."""
SCORE_FIELDS = ("image", "pred_score", "pred_label", "error")
OVERLAY_PNG_COMPRESSION = 1
"""zlib level of the overlay PNGs: lossless like Pillow's default (6), about 4x faster to write, files ~15% larger."""


def check_model_path(model: Path) -> Path:
    """Return ``model`` when it is an exported ``model.xml`` with its ``.bin`` beside it.

    Raises:
        FileNotFoundError: Naming the path, otherwise.
    """
    model = Path(model)
    if model.suffix != ".xml" or not model.is_file() or not model.with_suffix(".bin").is_file():
        msg = f"No exported OpenVINO model at {model} (expected model.xml with model.bin beside it)."
        raise FileNotFoundError(msg)
    return model


def load_inferencer(model: Path, device: str = "CPU", precision_hint: dict | None = None) -> OpenVINOInferencer:
    """Load anomalib's OpenVINO inferencer for an exported ``model.xml``, with a clear error when it is missing.

    Args:
        model: Path to the exported ``.xml`` (its ``.bin`` beside it).
        device: OpenVINO device.
        precision_hint: OpenVINO config; ``None`` for FP32 execution (``INFERENCE_PRECISION_HINT=f32``:
            CPUs with AMX/AVX512-BF16 would otherwise run FP32 IRs in bfloat16). ``{}`` for the plugin's
            own default.
    """
    model = check_model_path(model)
    return OpenVINOInferencer(path=model, device=device, config=FP32 if precision_hint is None else precision_hint)


def ir_precision_hint(model: "openvino.Model") -> str:  # noqa: F821
    """Return the inference precision an IR names in its runtime info, ``"f32"`` when it names none."""
    if model.has_rt_info(list(PRECISION_RT_INFO)):
        return str(model.get_rt_info(list(PRECISION_RT_INFO)).astype(str))
    return "f32"


def throughput_inferencer(model: Path, device: str = "CPU") -> OpenVINOInferencer:
    """Load anomalib's inferencer compiled for throughput (``PERFORMANCE_HINT=THROUGHPUT``) at the IR's precision."""
    import openvino as ov

    model = check_model_path(model)
    precision = ir_precision_hint(ov.Core().read_model(model))
    config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision}
    return OpenVINOInferencer(path=model, device=device, config=config)


def list_images(images: Path) -> list[Path]:
    """List the image files of ``images`` (a file or a folder), sorted.

    Raises:
        FileNotFoundError: Naming ``images`` when it holds no image.
    """
    try:
        return sorted(get_image_filenames(images))
    except ValueError as error:
        msg = f"No images to predict in {images}: {error}"
        raise FileNotFoundError(msg) from error


def overlay_path(image: Path, images: Path, output: Path) -> Path:
    """Where the overlay of ``image`` goes: ``output/<name>.png``, under its sub-folder of ``images`` if any.

    Sub-folders are kept so that ``crack/000.png`` and ``good/000.png`` do not overwrite each other.
    """
    relative = image.relative_to(images) if images.is_dir() else Path(image.name)
    return (output / relative).with_suffix(".png")


class ScoresFile:
    """``scores.csv`` written row by row: header once, every row flushed as soon as it is known.

    An existing file with the same columns is appended to (a production line keeps one log); one with
    other columns is refused rather than mixed or overwritten.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        existing_header = None
        if path.is_file() and path.stat().st_size > 0:
            with path.open(newline="") as file:
                existing_header = next(csv.reader(file), None)
            if existing_header != list(SCORE_FIELDS):
                msg = (
                    f"{path} exists with columns {existing_header}, not {list(SCORE_FIELDS)}: "
                    "choose another --output (the file is left as it is)."
                )
                raise ValueError(msg)
        self._file: TextIO = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=SCORE_FIELDS)
        if existing_header is None:
            self._writer.writeheader()
            self._file.flush()

    def append(self, row: dict) -> None:
        """Write one row and flush it."""
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


@dataclass
class ServingReport:
    """What one run of :func:`serve_folder` scored: rows in the folder's order, failures, wall time."""

    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[dict]:
        """Rows of the files that could not be scored."""
        return [row for row in self.rows if row["error"]]

    @property
    def images_per_second(self) -> float:
        """Files handled (scored or failed) per second of wall time, model loading excluded."""
        return len(self.rows) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Result:
    """One file's outcome, handed to the writer thread."""

    index: int
    path: Path
    overlay: Path
    image: np.ndarray | None = None
    outputs: dict[str, np.ndarray] | None = None
    error: str = ""


class _OrderedWriter(threading.Thread):
    """Draws overlays and appends rows in the folder's order, as results arrive in any order."""

    def __init__(self, scores: ScoresFile, overlays: bool, compression: int, report: ServingReport) -> None:
        super().__init__(name="anomalib-rdx-predict-writer", daemon=True)
        self.results: queue.Queue[_Result | None] = queue.Queue(maxsize=64)
        self.scores, self.overlays, self.compression, self.report = scores, overlays, compression, report
        self.failure: BaseException | None = None
        self._waiting: dict[int, _Result] = {}
        self._next = 0

    def run(self) -> None:
        while (result := self.results.get()) is not None:
            if self.failure is not None:  # keep draining so that producers never block
                continue
            try:
                self._waiting[result.index] = result
                while self._next in self._waiting:
                    self._write(self._waiting.pop(self._next))
                    self._next += 1
            except BaseException as error:  # re-raised by serve_folder in the main thread
                self.failure = error

    def _write(self, result: _Result) -> None:
        row = {"image": str(result.path), "pred_score": "", "pred_label": "", "error": result.error}
        if not result.error:
            item = next(iter(NumpyImageBatch(image=result.image, **result.outputs)))
            item.image_path = str(result.path)
            row["pred_score"] = float(item.pred_score)
            row["pred_label"] = int(item.pred_label)
            if self.overlays:
                overlay = visualize_image_item(
                    item, fields=["image"], overlay_fields=[("image", ["anomaly_map", "pred_mask"])]
                )
                if overlay is not None:
                    result.overlay.parent.mkdir(parents=True, exist_ok=True)
                    overlay.save(result.overlay, compress_level=self.compression)
        else:
            print(f"Could not score {result.path}: {result.error}", file=sys.stderr, flush=True)
        self.scores.append(row)
        self.report.rows.append(row)


class _RequestPool:
    """OpenVINO's ``AsyncInferQueue`` whose failed requests become error rows instead of stopping the run.

    A request that fails does not call its callback, and the queue raises its error at the next
    ``start_async`` or ``wait_all``. Then every request still without a result is tried again alone on a
    fresh queue (the one that fails again gets an error row), and the image being submitted is tried once more.
    """

    def __init__(self, inferencer: OpenVINOInferencer, requests: int, deliver: "Callable[[_Result], None]") -> None:
        self._compiled = inferencer.model
        self._input_name = inferencer.input_blob.any_name
        self._requests = requests
        self._deliver_to = deliver
        self._delivered: set[int] = set()
        self._in_flight: dict[int, _Result] = {}
        self._queue = self._new_queue()

    def _new_queue(self) -> "openvino.AsyncInferQueue":  # noqa: F821
        import openvino as ov

        pool = ov.AsyncInferQueue(self._compiled, self._requests)
        pool.set_callback(self._on_done)
        return pool

    def _deliver(self, result: _Result) -> None:
        """Hand each image's result on once (a request retried after a failure may also finish late)."""
        if result.index not in self._delivered:
            self._delivered.add(result.index)
            self._deliver_to(result)

    def _on_done(self, request: "openvino.InferRequest", result: _Result) -> None:  # noqa: F821
        self._in_flight.pop(result.index, None)
        try:
            ports = self._compiled.outputs
            result.outputs = {next(iter(port.names)): request.get_tensor(port).data.copy() for port in ports}
        except Exception as error:  # reported as the file's row
            result.error = f"inference failed: {error}"
        self._deliver(result)

    def _start(self, result: _Result) -> None:
        self._in_flight[result.index] = result
        try:
            self._queue.start_async({self._input_name: result.image}, result)
        except Exception:
            self._in_flight.pop(result.index, None)
            raise

    def _fail_in_flight(self, error: Exception) -> None:
        """Retry, one at a time on a fresh queue, the requests left without a result by ``error``.

        The queue does not say which of its requests failed, so each is tried alone: an image that fails
        again gets the error row, the others (in flight beside it) are scored.
        """
        del error
        with contextlib.suppress(Exception):  # the same failure, being reported
            self._queue.wait_all()
        left = [self._in_flight.pop(index) for index in sorted(self._in_flight)]
        for result in left:
            self._queue = self._new_queue()
            try:
                self._start(result)
                self._queue.wait_all()
            except Exception as retry_error:  # this image itself fails
                self._in_flight.pop(result.index, None)
                result.error = f"inference failed: {retry_error}"
                self._deliver(result)
        self._queue = self._new_queue()

    def submit(self, result: _Result) -> None:
        """Start inference of ``result.image``; its result goes to ``deliver`` (a failure as an error row)."""
        try:
            self._start(result)
        except Exception as error:  # an earlier request failed (or this one cannot start)
            self._fail_in_flight(error)
            try:
                self._start(result)
            except Exception as retry_error:
                result.error = f"inference failed: {retry_error}"
                self._deliver(result)
                self._fail_in_flight(retry_error)

    def finish(self) -> None:
        """Wait for every request; report those that failed."""
        try:
            self._queue.wait_all()
        except Exception as error:
            self._fail_in_flight(error)


def serve_folder(
    inferencer: OpenVINOInferencer,
    images: Path,
    output: Path,
    overlays: bool = True,
    requests: int = 0,
    overlay_compression: int = OVERLAY_PNG_COMPRESSION,
) -> ServingReport:
    """Score every image of ``images`` asynchronously; write overlays and append rows to ``output/scores.csv``.

    Reading and pre-processing (anomalib's ``read_image`` and ``OpenVINOInferencer.pre_process``) run in
    the calling thread, inference in OpenVINO's request pool, overlays and rows in a writer thread.

    Args:
        inferencer: anomalib's inferencer, best compiled with :func:`throughput_inferencer`.
        images: Image file or folder.
        output: Folder for the overlays and ``scores.csv``.
        overlays: Draw the heat-map overlays.
        requests: Requests in flight; ``0`` for the compiled model's optimal number.
        overlay_compression: zlib level (0-9) of the overlay PNGs.

    Returns:
        The rows (one per file, in order; failed files carry their error) and the wall time.

    Raises:
        FileNotFoundError: When ``images`` holds no image.
        ValueError: When an overlay would overwrite an input image, or ``scores.csv`` has other columns.
    """
    paths = list_images(images)
    if overlays:
        inputs = {path.resolve() for path in paths}
        clash = next((path for path in paths if overlay_path(path, images, output).resolve() in inputs), None)
        if clash is not None:
            msg = f"The overlay of {clash} would overwrite an input image: choose an --output outside {images}."
            raise ValueError(msg)
    output.mkdir(parents=True, exist_ok=True)
    report = ServingReport()
    scores = ScoresFile(output / "scores.csv")
    writer = _OrderedWriter(scores, overlays, overlay_compression, report)
    pool = _RequestPool(inferencer, requests, writer.results.put)
    start = time.perf_counter()
    writer.start()
    try:
        for index, path in enumerate(paths):
            overlay = overlay_path(path, images, output)
            try:
                image = OpenVINOInferencer.pre_process(read_image(path, as_tensor=False))
            except Exception as error:  # any unreadable file: a row with its error
                error_text = f"unreadable image: {type(error).__name__}: {error}"
                writer.results.put(_Result(index, path, overlay, error=error_text))
                continue
            pool.submit(_Result(index, path, overlay, image=image))
    finally:
        pool.finish()  # every request's result reaches the writer before it is told to stop
        writer.results.put(None)
        writer.join()
        scores.close()
    report.seconds = time.perf_counter() - start
    if writer.failure is not None:
        raise writer.failure
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``anomalib-rdx-predict``); the exit status: 1 when any file failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model.xml")
    parser.add_argument("--images", type=Path, required=True, help="image file or folder of images")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--no-overlays", action="store_true", help="write scores.csv only")
    args = parser.parse_args(argv)
    # OpenVINOInferencer writes openvino_cache/ in the working directory: keep it with the output.
    args.output.mkdir(parents=True, exist_ok=True)
    model, images, output = args.model.resolve(), args.images.resolve(), args.output.resolve()
    previous = Path.cwd()
    os.chdir(output)
    try:
        inferencer = throughput_inferencer(model, args.device)
        report = serve_folder(inferencer, images, output, overlays=not args.no_overlays)
    finally:
        os.chdir(previous)
    for row in report.rows:
        if not row["error"]:
            print(f"{row['image']}\tscore={row['pred_score']:.4f}\tlabel={row['pred_label']}")
    failed = report.failed
    print(
        f"{len(report.rows) - len(failed)} images scored, {len(failed)} failed, in {report.seconds:.2f} s: "
        f"{report.images_per_second:.1f} images/s ({output / 'scores.csv'})"
    )
    if failed:
        print(
            f"{len(failed)} file(s) could not be scored: {', '.join(row['image'] for row in failed)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
