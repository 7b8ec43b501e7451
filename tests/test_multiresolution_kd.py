"""MultiResolutionKD: cloner, multiresolution loss and score, forward and gradient maps."""

import pytest
import torch
from torch import nn

from anomalib_rdx import MultiResolutionKD
from anomalib_rdx.models.multiresolution_kd import MultiresolutionDistillationLoss
from anomalib_rdx.models.multiresolution_kd.loss import per_image_discrepancy


def _model(teacher: dict, **kwargs: object) -> MultiResolutionKD:
    return MultiResolutionKD(**teacher, pre_processor=MultiResolutionKD.configure_pre_processor((64, 64)), **kwargs)


def test_paper_defaults() -> None:
    model = MultiResolutionKD(pre_trained=False)
    assert model.hparams.backbone == "vgg16"
    assert len(model.hparams.layers) == 4
    assert model.input_size == (128, 128)
    assert model.model.mse_weight == 0.5
    assert model.localization == "forward"


@pytest.mark.parametrize(("backbone", "layers"), [("vgg16", [1, 2, 3, 4]), ("efficientnet_lite0", [1, 2, 3, 4])])
def test_cloner_is_smaller_and_matches_expert_layers(backbone: str, layers: list[int]) -> None:
    model = MultiResolutionKD(backbone=backbone, layers=layers, pre_trained=False)
    expert, cloner = model.model.features(torch.rand(2, 3, 128, 128))
    assert [e.shape for e in expert] == [c.shape for c in cloner]
    cloner_size = sum(p.numel() for p in model.model.cloner.parameters())
    expert_size = sum(p.numel() for p in model.model.expert.parameters())
    # Half-width intermediate convolutions: about a third of VGG16, a quarter of efficientnet_lite0.
    assert cloner_size < expert_size / 2
    assert not any(p.requires_grad for p in model.model.expert.parameters())


def test_loss_direction_and_distance_terms() -> None:
    expert = [torch.ones(1, 2, 4, 4)]
    assert MultiresolutionDistillationLoss(0.5)(expert, [torch.ones(1, 2, 4, 4)]).item() == pytest.approx(0.0, abs=1e-6)
    # Same direction, twice the magnitude: no cosine term, MSE = 1.
    assert MultiresolutionDistillationLoss(0.5)(expert, [2 * torch.ones(1, 2, 4, 4)]).item() == pytest.approx(0.5)
    # Opposite direction: cosine term 2, MSE 4.
    assert MultiresolutionDistillationLoss(0.01)(expert, [-torch.ones(1, 2, 4, 4)]).item() == pytest.approx(2.04)


def test_image_score_is_the_training_discrepancy(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model({**lite0_teacher, "layers": [1, 2, 3, 4]}).eval()
    with torch.no_grad():
        output = model.model(sample_images)
        expert, cloner = model.model.features(sample_images)
    expected = per_image_discrepancy(expert, cloner, 0.5)
    assert torch.allclose(output.pred_score, expected)
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()


@pytest.mark.parametrize("method", ["gradient", "smoothgrad", "guided"])
def test_gradient_maps_have_input_size_and_are_finite(
    lite0_teacher: dict, sample_images: torch.Tensor, method: str
) -> None:
    model = _model({**lite0_teacher, "layers": [1, 2, 3, 4]}, localization=method).eval()
    with torch.inference_mode():  # as in Lightning's evaluation loops
        output = model.predict_images(sample_images)
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()
    assert (output.anomaly_map >= 0).all()
    assert output.anomaly_map.sum() > 0
    # Guided backpropagation leaves no hooks behind and restores in-place activations.
    for module in model.model.modules():
        assert not module._backward_hooks
    assert any(isinstance(m, nn.ReLU6) and m.inplace for m in model.model.expert.modules())


def test_gradient_flows_through_the_expert_too(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model({**lite0_teacher, "layers": [1, 2, 3, 4]}).eval()
    images = sample_images.clone().requires_grad_(True)
    (through_both,) = torch.autograd.grad(model.model.score(images).sum(), images)
    normalized = model.model.normalize(images)
    with torch.no_grad():
        expert = [f.detach() for f in model.model.expert(normalized).values()]
    cloner_only = per_image_discrepancy(expert, model.model.cloner(normalized), 0.5)
    (through_cloner,) = torch.autograd.grad(cloner_only.sum(), images)
    assert not torch.allclose(through_both, through_cloner)


def test_invalid_localization() -> None:
    with pytest.raises(ValueError, match="localization"):
        MultiResolutionKD(pre_trained=False, localization="saliency")
