"""MultiResolutionKD: the authors' layers and score, default layers for any CNN, maps computed in the torch model."""

from pathlib import Path

import pytest
import timm
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx import MultiResolutionKD
from anomalib_rdx.components import BackboneError
from anomalib_rdx.models.multiresolution_kd import MultiresolutionDistillationLoss
from anomalib_rdx.models.multiresolution_kd.loss import per_image_discrepancy


def _model(teacher: dict, size: int = 64, **kwargs: object) -> MultiResolutionKD:
    return MultiResolutionKD(**teacher, pre_processor=MultiResolutionKD.configure_pre_processor((size, size)), **kwargs)


def test_defaults_are_the_authors_setting() -> None:
    model = MultiResolutionKD(pre_trained=False)
    assert model.hparams.backbone == "vgg16"
    assert model.input_size == (128, 128)
    assert model.model.layers == [1, 2, 3, 4]
    assert model.model.layer_positions == "post_pool"
    assert model.model.score_layers == "last3"
    assert isinstance(model.model.normalize, nn.Identity)  # the authors' MVTec loader does not normalise
    assert model.model.mse_weight == 0.5
    assert model.lr == 1e-3
    assert model.localization == "forward"
    assert model.model.gradient_recipe == "official"
    assert model.hparams.image_score == "top_k_mean"  # the one departure, chosen on validation (README)


def test_vgg16_compares_pooled_blocks_2_to_5_at_strides_4_to_32() -> None:
    model = MultiResolutionKD(pre_trained=False).eval()
    assert model.model.compared_strides == (4, 8, 16, 32)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expert, cloner = model.model.features(images)
    assert [tuple(e.shape[1:]) for e in expert] == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    assert [e.shape for e in expert] == [c.shape for c in cloner]
    # The deepest compared map is VGG16's own pool5 output (timm's level 5), not a re-implementation of it.
    vgg = timm.create_model("vgg16", pretrained=False, features_only=True, out_indices=(5,)).eval()
    vgg.load_state_dict(model.model.expert.feature_extractor.state_dict(), strict=False)
    with torch.no_grad():
        (pool5,) = vgg(images)
    assert torch.allclose(expert[-1], pool5)


def test_pre_pool_keeps_the_earlier_layers() -> None:
    model = MultiResolutionKD(pre_trained=False, layer_positions="pre_pool", layers=[1, 2, 3, 4])
    assert model.model.compared_strides == (2, 4, 8, 16)
    with torch.no_grad():
        expert, _ = model.model.features(torch.rand(1, 3, 128, 128))
    assert [e.shape[-1] for e in expert] == [64, 32, 16, 8]


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "convnext_nano"])
def test_backbone_alone_selects_levels_at_strides_4_to_32(backbone: str) -> None:
    model = MultiResolutionKD(backbone=backbone, pre_trained=False).eval()
    assert model.model.layer_positions == "pre_pool"
    assert model.model.compared_strides == (4, 8, 16, 32)
    with torch.no_grad():
        expert, cloner = model.model.features(torch.rand(1, 3, 128, 128))
    assert [e.shape[-1] for e in expert] == [32, 16, 8, 4]
    assert [e.shape for e in expert] == [c.shape for c in cloner]


def test_post_pool_rule_on_another_family_and_unknown_backbone() -> None:
    model = MultiResolutionKD(backbone="resnet18", pre_trained=False, layer_positions="post_pool")
    assert model.model.layers == [0, 1, 2, 3]  # strides 2-16, max-pooled to 4-32
    assert model.model.compared_strides == (4, 8, 16, 32)
    with pytest.raises(BackboneError, match="not a timm model"):
        MultiResolutionKD(backbone="no_such_net", pre_trained=False)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("score_layers", "first3"), ("layer_positions", "mid_pool"), ("gradient_recipe", "x"), ("image_score", "mean")],
)
def test_invalid_switches_name_the_argument(argument: str, value: str) -> None:
    with pytest.raises(ValueError, match=argument):
        MultiResolutionKD(pre_trained=False, **{argument: value})


def test_cloner_is_smaller_and_the_expert_frozen() -> None:
    model = MultiResolutionKD(pre_trained=False)
    cloner_size = sum(p.numel() for p in model.model.cloner.parameters())
    expert_size = sum(p.numel() for p in model.model.expert.parameters())
    assert cloner_size < expert_size / 2
    assert not any(p.requires_grad for p in model.model.expert.parameters())


def test_loss_direction_and_distance_terms() -> None:
    expert = [torch.ones(1, 2, 4, 4)]
    assert MultiresolutionDistillationLoss(0.5)(expert, [torch.ones(1, 2, 4, 4)]).item() == pytest.approx(0.0, abs=1e-6)
    # Same direction, twice the magnitude: no cosine term, MSE = 1.
    assert MultiresolutionDistillationLoss(0.5)(expert, [2 * torch.ones(1, 2, 4, 4)]).item() == pytest.approx(0.5)
    # Opposite direction: cosine term 2, MSE 4.
    assert MultiresolutionDistillationLoss(0.01)(expert, [-torch.ones(1, 2, 4, 4)]).item() == pytest.approx(2.04)


@pytest.mark.parametrize(("score_layers", "scored"), [("last3", slice(1, 4)), ("all", slice(0, 4))])
def test_image_score_uses_the_configured_layers(
    lite0_weights: Path, sample_images: torch.Tensor, score_layers: str, scored: slice
) -> None:
    teacher = {"backbone": "efficientnet_lite0", "backbone_weights": str(lite0_weights)}
    model = _model(teacher, score_layers=score_layers, image_score="discrepancy").eval()
    with torch.no_grad():
        output = model.model(sample_images)
        expert, cloner = model.model.features(sample_images)
    assert len(expert) == 4
    assert torch.allclose(output.pred_score, per_image_discrepancy(expert[scored], cloner[scored], 0.5))
    other = slice(0, 4) if score_layers == "last3" else slice(1, 4)
    assert not torch.allclose(output.pred_score, per_image_discrepancy(expert[other], cloner[other], 0.5))
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()


@pytest.mark.parametrize("image_score", ["max", "top_k_mean"])
def test_image_score_from_the_forward_map(lite0_teacher: dict, sample_images: torch.Tensor, image_score: str) -> None:
    model = _model(lite0_teacher, image_score=image_score).eval()
    assert model.hparams.image_score == image_score
    with torch.no_grad():
        output = model.model(sample_images)
        paper = _model(lite0_teacher, image_score="discrepancy")
        paper.model.load_state_dict(model.model.state_dict())
        paper_output = paper.eval().model(sample_images)
    flat = output.anomaly_map.flatten(1)
    top = flat.amax(dim=1) if image_score == "max" else flat.topk(round(0.01 * flat.shape[1]), dim=1).values.mean(1)
    assert torch.allclose(output.pred_score.flatten(), top)
    assert torch.equal(output.anomaly_map, paper_output.anomaly_map)  # the map does not depend on the score
    assert not torch.allclose(output.pred_score.flatten(), paper_output.pred_score.flatten())


def test_training_mode_returns_every_compared_layer(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model(lite0_teacher, score_layers="last3").train()
    expert, cloner = model.model(sample_images)
    assert len(expert) == len(cloner) == 3


@pytest.mark.parametrize(("method", "recipe"), [("gradient", "official"), ("guided", "official"), ("guided", "raw")])
def test_gradient_maps_in_inference_mode(
    lite0_teacher: dict, sample_images: torch.Tensor, method: str, recipe: str
) -> None:
    model = _model(lite0_teacher, localization=method, gradient_recipe=recipe).eval()
    with torch.inference_mode():  # as in Lightning's evaluation loops
        output = model.model(sample_images)
    anomaly_map = output.anomaly_map
    assert anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(anomaly_map).all()
    assert (anomaly_map >= 0).all()
    assert (anomaly_map.flatten(1).amax(dim=1) > 0).all()
    if recipe == "official":  # scaled per image to [0, 1] before the blur
        assert (anomaly_map <= 1).all()
    # Guided backpropagation leaves no hooks behind and restores in-place activations.
    for module in model.model.modules():
        assert not module._backward_hooks
    assert any(isinstance(m, nn.ReLU6) and m.inplace for m in model.model.expert.modules())


def test_official_smoothgrad_is_finite(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model(lite0_teacher, localization="smoothgrad").eval()
    with torch.inference_mode():
        anomaly_map = model.model(sample_images[:1]).anomaly_map
    assert torch.isfinite(anomaly_map).all()
    assert 0 <= anomaly_map.min() <= anomaly_map.max() <= 1


def test_gradient_flows_through_the_expert_too(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model(lite0_teacher, normalize_input=True).eval()
    images = sample_images.clone().requires_grad_(True)
    (through_both,) = torch.autograd.grad(model.model.score(images).sum(), images)
    normalized = model.model.normalize(images)
    with torch.no_grad():
        expert = [f.detach() for f in model.model.expert(normalized).values()]
    cloner_only = per_image_discrepancy(expert, model.model.cloner(normalized), 0.5)
    (through_cloner,) = torch.autograd.grad(cloner_only.sum(), images)
    assert not torch.allclose(through_both, through_cloner)


def test_localization_is_fixed_at_construction() -> None:
    model = MultiResolutionKD(pre_trained=False)
    with pytest.raises(AttributeError, match="Build a new model with localization='gradient'"):
        model.localization = "gradient"
    with pytest.raises(ValueError, match="localization"):
        MultiResolutionKD(pre_trained=False, localization="saliency")


class _Maps(Callback):
    """Raw anomaly maps and images of the test and predict loops."""

    def __init__(self) -> None:
        self.maps: dict[str, list[torch.Tensor]] = {"test": [], "predict": []}
        self.images: list[torch.Tensor] = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, *args) -> None:
        self.maps["test"].append(outputs.anomaly_map.clone())
        self.images.append(batch.image.clone())

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, *args) -> None:
        self.maps["predict"].append(outputs.anomaly_map.clone())


def test_engine_and_torch_model_compute_the_same_gradient_map(
    magnetic_tile_subset: Path, lite0_teacher: dict, tmp_path: Path
) -> None:
    model = _model(
        lite0_teacher, localization="guided", post_processor=False, evaluator=False, visualizer=False
    )  # fmt: skip
    datamodule = MVTecAD(
        root=magnetic_tile_subset, category="magnetic_tile", eval_batch_size=8, num_workers=0,
        val_split_mode="synthetic", val_split_ratio=0.2, seed=0,
    )  # fmt: skip
    maps = _Maps()
    engine = Engine(logger=False, default_root_dir=tmp_path, enable_progress_bar=False, callbacks=[maps])
    engine.test(model, datamodule=datamodule, verbose=False)
    engine.predict(model, dataloaders=datamodule.test_dataloader())
    model.eval()
    with torch.no_grad():  # the same batches as the engine's loops
        direct = torch.cat([model.model(images).anomaly_map for images in maps.images])
    images = torch.cat(maps.images)
    assert direct.shape == (len(images), 1, 64, 64)
    assert torch.allclose(torch.cat(maps.maps["test"]).view_as(direct), direct, atol=1e-5)
    assert torch.allclose(torch.cat(maps.maps["predict"]).view_as(direct), direct, atol=1e-5)
    # It is the gradient map, not the forward discrepancy map.
    forward = _model(lite0_teacher).eval()
    forward.model.load_state_dict(model.model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(
            F.normalize(forward.model(images).anomaly_map.flatten(1)), F.normalize(direct.flatten(1))
        )
