r"""Which INT8 quantisation keeps a trained model's accuracy: chosen on synthetic validation, reported on test.

``python -m anomalib_rdx.benchmark.int8_study --checkpoint RDExpert=<ckpt>`` exports the checkpoint to an
OpenVINO FP32 IR once, quantises it with NNCF in several ways, all calibrated on held-out *training*
images, and reports image and pixel AUROC of PyTorch, FP32 and every INT8 variant on

- the **synthetic validation split** (anomalies made from held-out training images, the split the
  benchmark trains beside): this is where a variant is chosen. Use ``--val-blend 0.1 1.0``: on
  anomalib's split (anomalies blended at 0.01-0.2) INT8 scored *above* FP32, on the visible one the
  variants rank as on the real defects;
- the **test split**, reported for the record only.

Variants (``VARIANTS``):

- ``plain``: NNCF's defaults, every quantisable operation in INT8 (anomalib's own ``INT8_PTQ``);
- ``map_head``: the anomaly-map smoothing and everything after it stay FP32;
- ``comparison``: also the feature comparison (what lies between the compared feature maps and the
  smoothing: normalisation, products, sums, upsampling) and the convolutions that produce the compared
  features;
- ``mixed``: ``map_head`` with NNCF's ``MIXED`` preset (asymmetric activations, for activations that are
  not centred on zero);
- ``mixed_comparison``: both;
- ``score_head``: ``map_head`` and the image score's own operations
  (:func:`anomalib_rdx.components.export.int8_fp32_nodes`) in FP32, the package's earlier ``INT8_PTQ``.
  It differs from ``map_head`` only where the score is not read from the smoothed map
  (MultiResolutionKD's ``image_score="discrepancy"``);
- ``image_convolutions``: ``score_head`` and the first three convolutions on every path from the image
  (:func:`anomalib_rdx.components.export.image_convolution_nodes`: an EfficientNet's stem and first block,
  in every network that reads the image);
- ``image_comparison``: ``image_convolutions`` and the feature comparison with the convolutions that
  produce the compared features (:func:`anomalib_rdx.components.export.comparison_nodes`): the package's
  ``INT8_PTQ`` (:func:`anomalib_rdx.components.export.quantize_int8`);
- ``image_comparison:<depth>``: ``image_comparison`` with the first ``depth`` convolutions from the image
  (``0``: none; ``1``: the stems), to see how deep into the networks the image rule must reach;
- ``fp32:<module prefix>[+...]``: ``score_head`` and every operation of the named PyTorch modules
  (``fp32:model.teacher``, ``fp32:model.decoder.stages.0.2+model.decoder.stages.1.2``), to find which
  sub-network's quantisation costs accuracy (:func:`module_labels`).

OpenVINO runs at ``INFERENCE_PRECISION_HINT=f32`` (bf16 would add its own error).

Example:
    OMP_NUM_THREADS=2 python -m anomalib_rdx.benchmark.int8_study --root ../shared/data \\
        --category magnetic_tile --checkpoint RDExpert=results/RDExpert/.../model.ckpt --val-blend 0.1 1.0
"""

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from torchvision.transforms.v2 import Resize

from anomalib_rdx.components.export import IMAGE_CONVOLUTIONS, comparison_nodes, int8_fp32_nodes, map_head_nodes
from anomalib_rdx.data.synthetic import replace_validation_split

from .accuracy import BenchmarkConfig, add_val_blend_argument, load_benchmark_checkpoint, parsed_val_blend
from .cpu import cpu_description
from .deployment import DeploymentConfig, calibration_datamodule, checkpoint_argument, runtime_metrics

logger = logging.getLogger(__name__)


OVERFLOW_FIXES = ("nncf", "enable", "first_layer_only", "disable")
"""NNCF's overflow fix (weights in 7 bits, against the saturating 16-bit sums of INT8 kernels without VNNI):
``"nncf"`` leaves NNCF's default (the first quantised layer), the others set it; the package's ``INT8_PTQ``
keeps NNCF's default."""


def _quantize(
    xml: Path, calibration: MVTecAD, ignore: Callable | None, preset: str | None, overflow_fix: str = "nncf"
) -> "openvino.Model":  # noqa: F821
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.Core().read_model(xml)
    ignored = ignore(model) if ignore else []
    kwargs: dict = {"ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)} if ignored else {}
    if preset:
        kwargs["preset"] = nncf.QuantizationPreset(preset)
    if overflow_fix != "nncf":
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    dataset = nncf.Dataset(calibration.val_dataloader(), lambda batch: batch.image)
    logger.info("quantising with %d operations kept in FP32, preset %s", len(ignored), preset or "default")
    return nncf.quantize(model, dataset, **kwargs)


def weight_parameter_name(op: "openvino.Node") -> str | None:  # noqa: F821
    """Read the PyTorch parameter name of ``op``'s weight (its second input), where the exporter kept it.

    Walks back from the weight input to its constant; ``None`` where constant folding dropped the name
    (a depthwise convolution's reshaped kernel).
    """
    weight = op.input(1).get_source_output().get_node()
    while weight.get_type_name() != "Constant" and weight.get_input_size() > 0:
        weight = weight.input(0).get_source_output().get_node()
    return next((name for name in weight.output(0).get_names() if name.startswith("model.")), None)


def module_labels(model: "openvino.Model") -> dict[str, str]:  # noqa: F821
    """Label every operation with the PyTorch module it came from, read from the exporter's weight names.

    A convolution or matrix product whose weight keeps its parameter name (``model.teacher.….weight``) is
    labelled with that module; any other operation takes the label of its first labelled input (a
    depthwise convolution, whose folded weight lost its name, the label of the convolution before it).
    """
    labels: dict[str, str] = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() in {"Convolution", "GroupConvolution", "MatMul"}:
            parameter = weight_parameter_name(op)
            if parameter:
                labels[name] = parameter.rsplit(".", 1)[0]
                continue
        sources = (value.get_source_output().get_node().get_friendly_name() for value in op.inputs())
        label = next((labels[source] for source in sources if source in labels), None)
        if label:
            labels[name] = label
    return labels


def module_variant(variant: str) -> Callable:
    """``fp32:<prefix>[+<prefix>...]``: the package's INT8 scope and the modules under those prefixes in FP32."""
    prefixes = tuple(variant.removeprefix("fp32:").split("+"))

    def ignore(model: "openvino.Model") -> list[str]:  # noqa: F821
        modules = [name for name, label in module_labels(model).items() if label.startswith(prefixes)]
        return int8_fp32_nodes(model) + modules

    return ignore


def image_depth_variant(variant: str) -> Callable:
    """Rule of an ``image_comparison:<depth>`` variant: the package's ``INT8_PTQ`` at that image depth."""
    depth = int(variant.removeprefix("image_comparison:"))
    return lambda model: int8_fp32_nodes(model, depth, comparison=True)


def variant_rule(variant: str) -> tuple[Callable | None, str | None]:
    """Return what ``variant`` keeps in FP32 (a function of the OpenVINO model) and its NNCF preset."""
    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant.startswith("image_comparison:"):
        return image_depth_variant(variant), None
    return module_variant(variant), None


def parse_variant(value: str) -> str:
    """Check a ``--variants`` value: a known variant, ``image_comparison:<depth>`` or ``fp32:<modules>``."""
    depth = value.removeprefix("image_comparison:")
    if (
        value in VARIANTS
        or (value.startswith("fp32:") and len(value) > len("fp32:"))
        or (value.startswith("image_comparison:") and depth.isdigit())
    ):
        return value
    msg = (
        f"unknown variant {value!r}: one of {sorted(VARIANTS)}, image_comparison:<depth> or "
        "fp32:<module prefix>[+<module prefix>...]"
    )
    raise argparse.ArgumentTypeError(msg)


VARIANTS: dict[str, tuple[Callable | None, str | None]] = {
    "plain": (None, None),
    "map_head": (map_head_nodes, None),
    "comparison": (lambda model: map_head_nodes(model) + comparison_nodes(model), None),
    "mixed": (map_head_nodes, "mixed"),
    "mixed_comparison": (lambda model: map_head_nodes(model) + comparison_nodes(model), "mixed"),
    "score_head": (int8_fp32_nodes, None),
    "image_convolutions": (lambda model: int8_fp32_nodes(model, IMAGE_CONVOLUTIONS), None),
    "image_comparison": (lambda model: int8_fp32_nodes(model, IMAGE_CONVOLUTIONS, comparison=True), None),
}


def synthetic_validation(
    config: DeploymentConfig, val_blend: tuple[float, float] | None = None, workdir: Path | None = None
) -> MVTecAD:
    """Build the benchmark's synthetic validation split (its seed and ratio), resized to the IR's input size.

    The split is the one ``python -m anomalib_rdx.benchmark`` trains beside, so its images were held out of
    the checkpoint's training. With ``val_blend`` its anomalies are re-made at that blend factor range
    (:func:`~anomalib_rdx.data.synthetic.replace_validation_split`, written under ``workdir``).
    """
    protocol = BenchmarkConfig()
    datamodule = MVTecAD(
        root=config.root,
        category=config.category,
        eval_batch_size=config.eval_batch_size,
        num_workers=0,
        augmentations=Resize((config.image_size, config.image_size), antialias=True),
        val_split_mode="synthetic",
        val_split_ratio=protocol.val_split_ratio,
        seed=protocol.seed,
    )
    datamodule.setup("fit")
    datamodule.setup("test")
    if val_blend:
        replace_validation_split(datamodule, val_blend, (workdir or Path.cwd()) / "synthetic_validation", protocol.seed)
    return datamodule


def study(
    name: str,
    checkpoint: Path,
    config: DeploymentConfig,
    variants: list[str],
    workdir: Path,
    val_blend: tuple[float, float] | None = None,
    overflow_fix: str = "nncf",
) -> dict:
    """Export ``checkpoint`` once, quantise it per variant; AUROC of every runtime on validation and test."""
    import openvino as ov

    size = (config.image_size, config.image_size)
    model = load_benchmark_checkpoint(name, checkpoint, config.image_size)
    engine = Engine(logger=False, default_root_dir=workdir, accelerator="cpu", devices=1)
    fp32 = engine.export(model, ExportType.OPENVINO, export_root=workdir / "fp32", input_size=size)
    calibration = calibration_datamodule(config)
    calibration.setup("fit")
    artifacts = {"openvino_fp32": fp32}
    for variant in variants:
        ignore, preset = variant_rule(variant)
        path = workdir / f"int8_{variant}.xml"
        ov.save_model(_quantize(fp32, calibration, ignore, preset, overflow_fix), path)
        artifacts[f"int8_{variant}"] = path
    evaluation = synthetic_validation(config, val_blend, workdir)
    previous = Path.cwd()
    os.chdir(workdir)  # OpenVINO may write a cache in the working directory
    try:
        validation = runtime_metrics(model, artifacts, evaluation.val_dataloader())
        test = runtime_metrics(model, artifacts, evaluation.test_dataloader())
    finally:
        os.chdir(previous)
    return {
        "model": name,
        "checkpoint": str(checkpoint),
        "calibration_images": len(calibration.val_data),
        "validation_images": len(evaluation.val_data),
        "val_blend": list(val_blend) if val_blend else "anomalib (0.01, 0.2)",
        "overflow_fix": overflow_fix,
        "test_images": len(evaluation.test_data),
        "validation": validation,
        "test": test,
    }


def _table(result: dict) -> str:
    runtimes = [key.removeprefix("image_AUROC_") for key in result["validation"] if key.startswith("image_AUROC_")]
    lines = ["runtime | val image | val pixel | test image | test pixel"]
    for runtime in runtimes:
        splits = ("validation", "test")
        figures = [result[split][f"{level}_AUROC_{runtime}"] for split in splits for level in ("image", "pixel")]
        lines.append(f"{runtime} | " + " | ".join(f"{value:.4f}" for value in figures))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    defaults = DeploymentConfig()
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.int8_study",
        description="Compare INT8 quantisation variants of trained models on synthetic validation and test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, type=checkpoint_argument, help="NAME=PATH")
    parser.add_argument("--root", default=defaults.root, help="parent folder of the MVTec-layout category folder")
    parser.add_argument("--category", default=defaults.category)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument(
        "--variants",
        nargs="+",
        type=parse_variant,
        default=list(VARIANTS),
        help=f"any of {sorted(VARIANTS)}; image_comparison:<depth> (image_comparison with that many "
        "convolutions from the image, 0: none); or fp32:<module prefix>[+...] (e.g. "
        "fp32:model.teacher+model.decoder): the map head and score in FP32 and those modules as well",
    )
    parser.add_argument(
        "--overflow-fix",
        choices=OVERFLOW_FIXES,
        default="nncf",
        help="NNCF's overflow fix for every variant (7-bit weights: 'enable' in every dense layer; "
        "'first_layer_only'; 'disable'); 'nncf': NNCF's default (the first layer), as the package's INT8_PTQ",
    )
    add_val_blend_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("results/int8_study.json"))
    args = parser.parse_args(argv)
    blend = parsed_val_blend(parser, args)
    config = DeploymentConfig(root=args.root, category=args.category, image_size=args.image_size)
    results = []
    for name, checkpoint in args.checkpoint:
        with tempfile.TemporaryDirectory() as scratch:
            results.append(study(name, checkpoint, config, args.variants, Path(scratch), blend, args.overflow_fix))
        print(f"\n{name}\n{_table(results[-1])}")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        # ONEDNN_MAX_CPU_ISA (e.g. AVX2) makes OpenVINO use the kernels of an older CPU: record it with the CPU
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
        document = {"cpu": cpu_description(), "onednn_max_cpu_isa": isa, "results": results}
        args.output.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
