"""Compare image scores and border handling of a trained model on the synthetic validation split only.

``python -m anomalib_rdx.benchmark.scoring_study --model RDExpert-plain --checkpoint <ckpt> --root ../shared/data``

The validation split is the benchmark's (same seed and ratio): held-out training images, half of them with
synthetic anomalies and masks. The test split is never read. For the checkpoint's raw anomaly maps it
prints

- image AUROC of the score the model serves (``model``) and of each image score computed from the map:
  the maximum (the papers' score for the RD family) and the mean of the top ``k`` share of pixels;
- the mean map value on the normal validation images by distance to the image border, which shows
  whether a model's maps fall off (or rise) towards the border, where ``fray`` and ``break`` defects lie.
"""

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback

from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.components.border_calibration import border_distance

from .accuracy import (
    BenchmarkConfig,
    add_val_blend_argument,
    load_benchmark_checkpoint,
    model_argument,
    parsed_val_blend,
    validation_split,
)

TOP_K_SHARES = (0.001, 0.01, 0.05)
BORDER_BANDS = ((0, 8), (8, 16), (16, 32), (32, 64), (64, None))


class ValidationOutputs(Callback):
    """Keep the raw maps, scores, labels and masks of every validation batch."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Store the batch's outputs."""
        del trainer, pl_module, args
        self.maps.append(outputs.anomaly_map.detach().reshape(len(outputs.gt_label), *outputs.anomaly_map.shape[-2:]))
        self.scores.append(outputs.pred_score.detach().flatten())
        self.labels.append(outputs.gt_label.detach().int())
        self.masks.append(outputs.gt_mask.detach().reshape(self.maps[-1].shape).int())


def image_score(maps: torch.Tensor, top_k_share: float | None) -> torch.Tensor:
    """Map maximum (``None``) or the mean of the ``top_k_share`` highest pixels of each map."""
    flat = maps.flatten(1)
    if top_k_share is None:
        return flat.amax(dim=1)
    k = max(1, round(top_k_share * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def border_profile(maps: torch.Tensor) -> dict[str, float]:
    """Mean map value in bands of distance (pixels) to the nearest image border."""
    height, width = maps.shape[-2:]
    distance = border_distance(height, width, max_distance=max(height, width))  # uncapped
    profile = {}
    for low, high in BORDER_BANDS:
        band = (distance >= low) & (distance < (high if high is not None else height))
        profile[f"{low}-{high if high is not None else 'centre'}px"] = round(float(maps[:, band].mean()), 4)
    return profile


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Compute anomalib's AUROC of ``scores`` against binary ``labels``."""
    metric = ScoreAUROC(fields=["pred_score", "gt_label"])
    metric.update(SimpleNamespace(pred_score=scores.flatten(), gt_label=labels.flatten()))
    return round(float(metric.compute()), 4)


def _variant(value: str) -> dict[str, object]:
    """Parse one variant: ``KEY=VALUE``, or several joined by commas (``a=1,b=x``; a tuple value stays whole)."""
    parts = re.split(r",(?=\s*[A-Za-z_]\w*=)", value)
    return dict(model_argument(part.strip(), "--variants") for part in parts)


def main(argv: list[str] | None = None) -> dict:
    """Run the study on one checkpoint and print a JSON summary."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.scoring_study",
        description="Image scores and border profile of a trained model on the synthetic validation split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="benchmark model name of the checkpoint (e.g. RDExpert)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="Lightning checkpoint")
    parser.add_argument("--root", default=defaults.root, help="parent of the MVTec-layout category folder")
    parser.add_argument("--category", default=defaults.category, help="category folder")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="as the benchmark run")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the benchmark run's seed (same split)")
    parser.add_argument("--val-split-ratio", type=float, default=defaults.val_split_ratio, help="as the benchmark")
    add_val_blend_argument(parser)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        type=_variant,
        help="constructor overrides to compare, each KEY=VALUE (e.g. map_reference=expert) or several "
        "joined by commas (border_calibration=true,map_sigma=2); one model each",
    )
    args = parser.parse_args(argv)
    val_blend = parsed_val_blend(parser, args)
    seed_everything(args.seed)  # the synthetic anomalies are drawn when the split is made: same seed, same split
    datamodule = MVTecAD(
        root=args.root,
        category=args.category,
        eval_batch_size=16,
        num_workers=0,
        val_split_mode="synthetic",
        val_split_ratio=args.val_split_ratio,
        seed=args.seed,
    )
    results = []
    for overrides in [{}, *args.variants]:
        model = load_benchmark_checkpoint(args.model, args.checkpoint, args.image_size, **overrides)
        outputs = ValidationOutputs()
        split = validation_split(val_blend, args.seed)
        engine = Engine(callbacks=[*split, outputs], logger=False, default_root_dir="results/scoring_study", devices=1)
        engine.validate(model, datamodule=datamodule, verbose=False)
        maps, labels, masks = torch.cat(outputs.maps), torch.cat(outputs.labels), torch.cat(outputs.masks)
        summary = {
            "model": args.model,
            "overrides": overrides,
            "val_blend": list(val_blend) if val_blend else "anomalib (0.01, 0.2)",
            "validation_images": len(labels),
            "image_AUROC": {
                "model": auroc(torch.cat(outputs.scores), labels),  # the score the model serves
                **{
                    ("max" if share is None else f"top{share:g}_mean"): auroc(image_score(maps, share), labels)
                    for share in (None, *TOP_K_SHARES)
                },
            },
            "pixel_AUROC": auroc(maps[labels == 1].flatten(), masks[labels == 1].flatten()),
            "normal_map_by_border_distance": border_profile(maps[labels == 0]),
        }
        print(json.dumps(summary), flush=True)
        results.append(summary)
    return {"results": results}


if __name__ == "__main__":
    main()
