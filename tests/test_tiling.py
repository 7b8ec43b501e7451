"""anomalib's tiling works with every model: 256x256 inputs cut into 64x64 tiles, trained and scored."""

from pathlib import Path

import pytest
import torch
from anomalib.callbacks import TilerConfigurationCallback
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

import anomalib_rdx

from .conftest import requires_shared_data

pytestmark = [pytest.mark.slow, requires_shared_data]

INPUT, TILE = 256, 64


class TrainingInputShape(Callback):
    """Shape of the images the teacher (MKD: the expert) received during training steps."""

    shape: tuple[int, ...] = ()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        network = getattr(pl_module.model, "teacher", None) or pl_module.model.expert

        def record(module: torch.nn.Module, inputs: tuple) -> None:
            del module
            if trainer.training:
                self.shape = tuple(inputs[0].shape)

        network.register_forward_pre_hook(record)


@pytest.mark.parametrize("name", ["RDExpert", "AugmentedRD", "DualStudentKD", "MultiResolutionKD"])
def test_tiled_training_and_inference(
    name: str, magnetic_tile_subset: Path, lite0_teacher: dict, tmp_path: Path
) -> None:
    model_class = getattr(anomalib_rdx, name)
    model = model_class(**lite0_teacher, pre_processor=model_class.configure_pre_processor((INPUT, INPUT)))
    datamodule = MVTecAD(
        root=magnetic_tile_subset, category="magnetic_tile", train_batch_size=4, eval_batch_size=4,
        num_workers=0, val_split_mode="synthetic", val_split_ratio=0.2, seed=0,
    )  # fmt: skip
    shape = TrainingInputShape()
    tiler = TilerConfigurationCallback(enable=True, tile_size=TILE, stride=TILE)
    engine = Engine(
        max_epochs=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False, callbacks=[tiler, shape]
    )
    engine.fit(model, datamodule=datamodule)
    assert model.model.tiler is not None
    assert shape.shape[-2:] == (TILE, TILE)  # the networks trained on tiles
    (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    for metric in ("image_AUROC", "pixel_AUROC"):
        assert 0.0 <= metrics[metric] <= 1.0
    model.eval()
    images = next(iter(datamodule.test_dataloader())).image
    with torch.no_grad():
        predictions = model.model(model.pre_processor.transform(images))
    assert predictions.anomaly_map.shape[-2:] == (INPUT, INPUT)
    assert torch.isfinite(predictions.anomaly_map).all()
    assert torch.isfinite(predictions.pred_score).all()
