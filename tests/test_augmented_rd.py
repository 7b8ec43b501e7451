"""AugmentedRD: augmentations reach the teacher's second pass; with them off it is plain reverse distillation."""

import pytest
import torch

from anomalib_rdx import AugmentedRD
from anomalib_rdx.components import flat_cosine_distance
from anomalib_rdx.models.augmented_rd import RestorationAugmenter

OFF = {
    "color_jitter_probability": 0.0,
    "blur_probability": 0.0,
    "noise_probability": 0.0,
    "anomaly_probability": 0.0,
    "flip_probability": 0.0,
}


def _model(teacher: dict, **kwargs: object) -> AugmentedRD:
    return AugmentedRD(**teacher, pre_processor=AugmentedRD.configure_pre_processor((64, 64)), **kwargs)


def test_rd_defaults() -> None:
    model = AugmentedRD(pre_trained=False)
    assert model.hparams.backbone == "wide_resnet50_2"
    assert list(model.hparams.layers) == ["layer1", "layer2", "layer3"]
    assert (model.lr, model.betas) == (0.005, (0.5, 0.999))
    assert model.input_size == (256, 256)
    assert not any(p.requires_grad for p in model.model.teacher.parameters())


def test_without_augmentation_it_is_plain_reverse_distillation(
    lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = _model(lite0_teacher, **OFF).train()
    assert not model.augmenter.enabled
    raw, transformed = model.augmenter(sample_images)
    assert torch.equal(raw, sample_images)
    assert torch.equal(transformed, sample_images)
    raw_features, restored = model.model.restoration_features(raw, transformed)
    # Plain RD: the student decodes the teacher's features of the very image it must reproduce.
    teacher_features, student_features = model.model(sample_images)
    for a, b in zip(raw_features, teacher_features, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(restored, student_features, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    loss = model.model.restoration_loss(raw_features, restored)
    assert loss.item() == pytest.approx(flat_cosine_distance(teacher_features, student_features).item(), abs=1e-6)
    # The same as feeding the raw image through the augmented branch explicitly.
    _, restored_from_copy = model.model.restoration_features(raw, raw.clone())
    for a, b in zip(restored, restored_from_copy, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_augmentation_reaches_the_teachers_second_pass(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _model(lite0_teacher, color_jitter_probability=1.0, anomaly_probability=1.0).eval()
    raw, transformed = model.augmenter(sample_images)
    assert torch.equal(raw, sample_images)  # no flips: the target is the raw image
    assert not torch.equal(transformed, raw)
    with torch.no_grad():
        raw_features = model.model.teacher_features(model.model.normalize(raw))
        transformed_features = model.model.teacher_features(model.model.normalize(transformed))
    for a, b in zip(raw_features, transformed_features, strict=True):
        assert (a - b).abs().mean() > 1e-3


def test_geometric_augmentation_moves_target_and_input_together(sample_images: torch.Tensor) -> None:
    torch.manual_seed(0)
    augmenter = RestorationAugmenter(**{**OFF, "flip_probability": 1.0})
    raw, transformed = augmenter(sample_images)
    assert torch.equal(raw, sample_images.flip(-1).flip(-2))
    assert torch.equal(transformed, raw)


def test_probability_out_of_range_names_the_argument() -> None:
    with pytest.raises(ValueError, match="blur_probability"):
        RestorationAugmenter(blur_probability=1.5)


def test_training_updates_student_only(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _model(lite0_teacher)
    optimizer = model.configure_optimizers()
    teacher_before = [p.detach().clone() for p in model.model.teacher.parameters()]
    student_before = [p.detach().clone() for p in model.model.student_parameters()]
    raw, transformed = model.augmenter(sample_images)
    loss = model.model.restoration_loss(*model.model.restoration_features(raw, transformed))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.model.teacher.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(student_before, model.model.student_parameters(), strict=True))
