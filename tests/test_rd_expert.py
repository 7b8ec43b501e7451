"""RDExpert: loss terms, Guided Information Injection, ablation switches and training steps on real images."""

import math
import time

import pytest
import torch
from anomalib.data import ImageBatch, InferenceBatch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import Timer
from torch.nn import functional as F  # noqa: N812

from anomalib_rdx import RDExpert
from anomalib_rdx.components.schedule import budget_progress, schedule_factor
from anomalib_rdx.models.rd_expert.gii import GuidedInformationInjection, gate_features
from anomalib_rdx.models.rd_expert.loss import RDExpertLoss


def _model(teacher: dict, size: int = 64, **kwargs: object) -> RDExpert:
    return RDExpert(**teacher, pre_processor=RDExpert.configure_pre_processor((size, size)), **kwargs)


def _features(seed: int, shapes: tuple = ((2, 8, 16, 16), (2, 16, 8, 8))) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator) + 0.1 for shape in shapes]


class TestLoss:
    def test_teacher_loss_is_zero_when_teacher_is_expert_and_no_anomaly(self) -> None:
        features = _features(0)
        mask = torch.zeros(2, 1, 64, 64)
        assert RDExpertLoss().teacher_loss(features, features, features, features, mask).item() == pytest.approx(
            0, abs=1e-6
        )

    def test_mask_term_asks_for_distance_where_the_anomaly_is(self) -> None:
        features = _features(0)
        # teacher == expert everywhere, but the mask says "anomaly everywhere": L1(0, 1) = 1 per scale.
        mask = torch.ones(2, 1, 64, 64)
        assert RDExpertLoss().teacher_loss(features, features, features, features, mask).item() == pytest.approx(2.0)

    def test_normal_term_is_per_pixel_cosine_distance(self) -> None:
        expert = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([0]), 1.0)]  # every pixel (1, 0)
        teacher = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([1]), 1.0)]  # every pixel (0, 1): orthogonal
        mask = torch.zeros(1, 1, 16, 16)
        loss = RDExpertLoss().teacher_loss(teacher, expert, expert, expert, mask)
        assert loss.item() == pytest.approx(1.0)  # only the normal term: 1 - cos = 1

    def test_teacher_terms_can_be_switched_off_one_at_a_time(self) -> None:
        expert = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([0]), 1.0)]
        teacher = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([1]), 1.0)]  # orthogonal to the expert
        mask = torch.ones(1, 1, 16, 16)
        # teacher(normal) orthogonal to expert(normal): normal term 1; teacher(augmented) = expert(normal)
        # where the mask asks for distance 1: mask term 1; teacher(augmented) orthogonal to expert(augmented):
        # global term 1.
        arguments = (teacher, expert, expert, teacher, mask)
        assert RDExpertLoss().teacher_loss(*arguments).item() == pytest.approx(3.0)
        assert RDExpertLoss(["normal", "global"]).teacher_loss(*arguments).item() == pytest.approx(2.0)
        assert RDExpertLoss(["mask"]).teacher_loss(*arguments).item() == pytest.approx(1.0)
        assert RDExpertLoss(["global", "normal"]).teacher_terms == ("normal", "global")

    @pytest.mark.parametrize("terms", [[], ["normal", "normal"], ["mask", "gloabl"]])
    def test_unknown_repeated_or_no_teacher_terms_are_refused(self, terms: list[str]) -> None:
        with pytest.raises(ValueError, match="teacher_loss_terms"):
            RDExpertLoss(terms)

    def test_student_loss_targets_teacher_and_expert_of_normal_image(self) -> None:
        teacher, expert = _features(0), _features(1)
        assert RDExpertLoss.student_loss(teacher, teacher, teacher, teacher).item() == pytest.approx(0, abs=1e-6)
        one_term = RDExpertLoss.student_loss(teacher, teacher, teacher, expert).item()
        flat = sum(
            (1 - F.cosine_similarity(t.flatten(1), e.flatten(1))).mean().item()
            for t, e in zip(teacher, expert, strict=True)
        )
        assert one_term == pytest.approx(2 * flat, rel=1e-5)  # student_normal and student_augmented vs expert


class TestGuidedInformationInjection:
    def test_gate_passes_teacher_at_one_and_decoder_at_zero(self) -> None:
        teacher, decoder = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), -1.0)
        assert torch.equal(gate_features(teacher, decoder, torch.ones(1, 1, 2, 2)), teacher)
        assert torch.equal(gate_features(teacher, decoder, torch.zeros(1, 1, 2, 2)), decoder)
        half = gate_features(teacher, decoder, torch.full((1, 1, 2, 2), 0.5))
        assert torch.allclose(half, torch.ones_like(half))

    def test_similarity_is_per_pixel_cosine_without_gradient(self) -> None:
        module = GuidedInformationInjection(channels=4, shallower_channels=2)
        decoder = torch.rand(1, 4, 3, 3, requires_grad=True)
        similarity = module.similarity(decoder, decoder.detach())
        assert torch.allclose(similarity, torch.ones(1, 1, 3, 3), atol=1e-6)
        assert not similarity.requires_grad
        opposite = module.similarity(decoder, -decoder.detach())
        assert torch.equal(opposite, torch.zeros(1, 1, 3, 3))  # clamped convex gate

    def test_unclamped_gate_is_the_raw_cosine_similarity(self) -> None:
        module = GuidedInformationInjection(channels=4, shallower_channels=2, clamp=False)
        decoder = torch.rand(1, 4, 3, 3) + 0.1
        assert torch.allclose(module.similarity(decoder, -decoder), -torch.ones(1, 1, 3, 3), atol=1e-6)

    def test_ungated_skip_passes_teacher_everywhere(self) -> None:
        module = GuidedInformationInjection(channels=4, shallower_channels=2, gated=False)
        assert torch.equal(module.similarity(torch.rand(1, 4, 3, 3), -torch.rand(1, 4, 3, 3)), torch.ones(1, 1, 3, 3))

    def test_anomalous_decoder_region_blocks_teacher_detail(self) -> None:
        torch.manual_seed(0)
        module = GuidedInformationInjection(channels=4, shallower_channels=2).eval()
        teacher = torch.rand(1, 4, 6, 6) + 0.1
        shallower = torch.rand(1, 2, 12, 12)
        agreeing = module(teacher.clone(), teacher, shallower)
        changed_teacher = teacher.clone()
        changed_teacher[..., :3] = torch.rand(1, 4, 6, 3) + 0.1
        # The decoder disagrees with the changed teacher on the left half only.
        output = module(teacher.clone(), changed_teacher, shallower)
        left_gate = module.similarity(teacher, changed_teacher)[..., :3]
        assert left_gate.mean() < 1.0
        assert not torch.allclose(output[..., :3], agreeing[..., :3])


class TestModelAndAblations:
    def test_paper_defaults(self) -> None:
        model = RDExpert(pre_trained=False)
        assert model.hparams.backbone == "wide_resnet50_2"
        assert list(model.hparams.layers) == ["layer1", "layer2", "layer3"]
        assert model.input_size == (256, 256)
        assert (model.teacher_lr, model.student_lr, model.betas) == (1e-4, 5e-3, (0.5, 0.999))
        assert model.hparams.gii_mode == "gated"
        assert len(model.model.gii) == 2
        assert all(injection.gated for injection in model.model.gii)

    def test_expert_off_freezes_teacher_and_has_one_optimizer(self, lite0_teacher: dict) -> None:
        model = _model(lite0_teacher, use_expert=False)
        assert model.model.expert is None
        assert not any(p.requires_grad for p in model.model.teacher.parameters())
        assert len(model.configure_optimizers()) == 1

    def test_expert_off_alone_is_plain_reverse_distillation(self, lite0_teacher: dict) -> None:
        model = _model(lite0_teacher, use_expert=False)
        assert model.hparams.gii_mode == "off"
        assert len(model.model.gii) == 0
        assert model.model.expert is None

    @pytest.mark.parametrize("mode", ["gated", "ungated"])
    def test_skip_connections_without_expert_are_refused(self, lite0_teacher: dict, mode: str) -> None:
        # Trained on normal images only, a decoder fed teacher detail learns to copy the teacher.
        with pytest.raises(ValueError, match=rf"gii_mode='{mode}' with use_expert=False is refused"):
            _model(lite0_teacher, use_expert=False, gii_mode=mode)

    def test_expert_on_has_frozen_expert_equal_to_teacher(self, lite0_teacher: dict) -> None:
        model = _model(lite0_teacher)
        assert not any(p.requires_grad for p in model.model.expert.parameters())
        assert all(p.requires_grad for p in model.model.teacher.parameters())
        for (_, expert), (_, teacher) in zip(
            model.model.expert.state_dict().items(), model.model.teacher.state_dict().items(), strict=True
        ):
            assert torch.equal(expert, teacher)
        assert len(model.configure_optimizers()) == 2

    @pytest.mark.parametrize(("mode", "count", "gated"), [("off", 0, None), ("ungated", 2, False), ("gated", 2, True)])
    def test_gii_switch(self, lite0_teacher: dict, mode: str, count: int, gated: bool | None) -> None:
        model = _model(lite0_teacher, gii_mode=mode)
        assert len(model.model.gii) == count
        assert all(injection.gated is gated for injection in model.model.gii)

    def test_ablation_switches_reach_the_loss_and_the_gate(self, lite0_teacher: dict) -> None:
        model = _model(lite0_teacher, gii_clamp=False, teacher_loss_terms=["normal", "mask"])
        assert model.loss.teacher_terms == ("normal", "mask")
        assert [injection.clamp for injection in model.model.gii] == [False, False]
        paper = _model(lite0_teacher)
        assert paper.loss.teacher_terms == ("normal", "mask", "global")
        assert all(injection.clamp for injection in paper.model.gii)
        with pytest.raises(ValueError, match="teacher_loss_terms"):
            _model(lite0_teacher, teacher_loss_terms=["normal", "expert"])

    def test_invalid_gii_mode(self, lite0_teacher: dict) -> None:
        with pytest.raises(ValueError, match="gii_mode"):
            _model(lite0_teacher, gii_mode="sometimes")

    def test_normalize_in_pre_processor_is_refused(self, lite0_teacher: dict) -> None:
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms.v2 import Compose, Normalize, Resize

        transform = Compose([Resize((64, 64)), Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
        with pytest.raises(ValueError, match="Normalize"):
            RDExpert(**lite0_teacher, pre_processor=PreProcessor(transform=transform))

    def test_image_size_that_does_not_fit_the_stride(self, lite0_teacher: dict) -> None:
        with pytest.raises(ValueError, match="multiple of 32"):
            _model(lite0_teacher, size=48)

    def test_inference_returns_map_and_max_score(self, lite0_teacher: dict, sample_images: torch.Tensor) -> None:
        model = _model(lite0_teacher).eval()
        with torch.no_grad():
            output = model.model(sample_images)
        assert isinstance(output, InferenceBatch)
        assert output.anomaly_map.shape == (4, 1, 64, 64)
        assert torch.isfinite(output.anomaly_map).all()
        assert torch.allclose(output.pred_score.flatten(), output.anomaly_map.amax(dim=(-3, -2, -1)))


def _train_steps(model: RDExpert, images: torch.Tensor, steps: int, **trainer_arguments) -> None:
    """Run real training steps through Lightning on a fixed batch."""

    class Loader(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> ImageBatch:
            return images

    loader = torch.utils.data.DataLoader(
        Loader(),
        batch_size=None,
        collate_fn=lambda batch: ImageBatch(image=batch),
    )
    arguments = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = Trainer(**(arguments | trainer_arguments), accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader)


class _RecordRates(Callback):
    """The learning rate of every optimiser during each training batch."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_train_batch_end(self, trainer: Trainer, *args, **kwargs) -> None:
        self.rates.append([optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers])


@pytest.mark.parametrize(
    ("budget", "progress"),
    [({"max_epochs": 1}, [0, 0.25, 0.5, 0.75]), ({"max_steps": 4}, [0, 0.5])],  # two optimiser steps per batch
)
def test_cosine_schedule_decays_both_rates_over_the_budget(
    lite0_teacher: dict, sample_images: torch.Tensor, budget: dict, progress: list[float]
) -> None:
    model = _model(lite0_teacher, lr_schedule="cosine", teacher_lr=1e-4, student_lr=5e-3)
    recorder = _RecordRates()
    _train_steps(model, sample_images, steps=4, callbacks=[recorder], **budget)
    factors = [0.5 * (1 + math.cos(math.pi * share)) for share in progress]
    assert recorder.rates == [pytest.approx([1e-4 * f, 5e-3 * f]) for f in factors]


def test_budget_progress_follows_wall_clock_under_max_time() -> None:
    trainer = Trainer(max_epochs=-1, max_time={"minutes": 10}, logger=False, accelerator="cpu")
    timer = next(callback for callback in trainer.callbacks if isinstance(callback, Timer))
    assert budget_progress(trainer, optimizer_steps_per_batch=2) == 0
    timer.on_train_start(trainer, None)
    time.sleep(0.3)
    share = budget_progress(trainer, optimizer_steps_per_batch=2)
    assert 0.3 / 600 <= share < 10 / 600
    assert schedule_factor("cosine", share) == pytest.approx(0.5 * (1 + math.cos(math.pi * share)))
    assert schedule_factor("constant", share) == 1


def test_cosine_schedule_without_a_budget_is_refused(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    model = _model(lite0_teacher, lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_schedule='cosine' needs a finite training budget"):
        _train_steps(model, sample_images, steps=2, max_epochs=-1)


def test_unknown_lr_schedule_is_refused(lite0_teacher: dict) -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        _model(lite0_teacher, lr_schedule="linear")


@pytest.mark.parametrize("use_expert", [True, False])
def test_training_step_updates_the_right_networks(
    lite0_teacher: dict, sample_images: torch.Tensor, use_expert: bool
) -> None:
    torch.manual_seed(0)
    model = _model(lite0_teacher, use_expert=use_expert)
    teacher_before = [p.detach().clone() for p in model.model.teacher.parameters()]
    student_before = [p.detach().clone() for p in model.model.student_parameters()]
    expert_before = [p.detach().clone() for p in model.model.expert.parameters()] if use_expert else []
    _train_steps(model, sample_images, steps=2)
    teacher_changed = any(
        not torch.equal(a, b) for a, b in zip(teacher_before, model.model.teacher.parameters(), strict=True)
    )
    student_changed = any(
        not torch.equal(a, b) for a, b in zip(student_before, model.model.student_parameters(), strict=True)
    )
    assert student_changed
    assert teacher_changed is use_expert
    if use_expert:
        assert all(torch.equal(a, b) for a, b in zip(expert_before, model.model.expert.parameters(), strict=True))
    metrics = model.trainer.logged_metrics
    assert torch.isfinite(metrics["train_student_loss_epoch"])
    if use_expert:
        assert torch.isfinite(metrics["train_teacher_loss_epoch"])
