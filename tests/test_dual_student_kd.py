"""DualStudentKD: two inverted students, DF embedding, pyramid matching, combined anomaly map, ablations."""

import pytest
import torch

from anomalib_rdx import DualStudentKD
from anomalib_rdx.models.dual_student_kd import DualStudentAnomalyMap, PyramidMatchingLoss


def _model(teacher: dict, **kwargs: object) -> DualStudentKD:
    return DualStudentKD(**teacher, pre_processor=DualStudentKD.configure_pre_processor((64, 64)), **kwargs)


def test_paper_defaults() -> None:
    model = DualStudentKD(pre_trained=False)
    assert model.hparams.backbone == "resnet18"
    assert list(model.hparams.layers) == ["layer1", "layer2", "layer3"]
    assert model.model.use_encoder_student
    assert model.model.use_decoder_student
    assert model.model.df_source == "student"


def test_students_have_inverted_structures_and_the_teachers_scale(
    lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    model = _model(lite0_teacher).train()
    teacher, (encoder_student, decoder_student) = model.model(sample_images)
    assert [f.shape for f in encoder_student] == [f.shape for f in teacher]
    assert [f.shape for f in decoder_student] == [f.shape for f in teacher]
    # Se is the teacher's architecture, randomly initialised; the teacher stays frozen.
    teacher_state = model.model.teacher.state_dict()
    student_state = model.model.encoder_student.state_dict()
    assert teacher_state.keys() == student_state.keys()
    assert not torch.equal(next(iter(teacher_state.values())), next(iter(student_state.values())))
    assert not any(p.requires_grad for p in model.model.teacher.parameters())


def test_decoder_student_listens_to_the_encoder_student(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _model(lite0_teacher).train()
    teacher, students = model.model(sample_images)
    loss = PyramidMatchingLoss()(teacher, [students[1]])  # the decoder student's loss alone
    loss.backward()
    grads = [p.grad for p in model.model.encoder_student.parameters() if p.grad is not None]
    assert grads
    assert any(g.abs().sum() > 0 for g in grads)


def test_teacher_fed_embedding_does_not_train_the_encoder_student(
    lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    model = _model(lite0_teacher, df_source="teacher").train()
    teacher, students = model.model(sample_images)
    PyramidMatchingLoss()(teacher, [students[1]]).backward()
    assert all(p.grad is None for p in model.model.encoder_student.parameters())


@pytest.mark.parametrize(
    ("kwargs", "students", "has_encoder", "has_decoder"),
    [
        ({"students": "encoder"}, 1, True, False),
        ({"students": "decoder"}, 1, False, True),
        ({"df_source": "off"}, 2, True, True),
    ],
)
def test_ablations_train_and_score(
    lite0_teacher: dict,
    sample_images: torch.Tensor,
    kwargs: dict,
    students: int,
    has_encoder: bool,
    has_decoder: bool,
) -> None:
    model = _model(lite0_teacher, **kwargs).train()
    teacher, outputs = model.model(sample_images)
    assert len(outputs) == students
    assert model.model.use_encoder_student is has_encoder
    assert (model.model.decoder_student is not None) is has_decoder
    loss = model.loss(teacher, outputs)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        scored = model.model(sample_images)
    assert scored.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(scored.anomaly_map).all()


def test_decoder_only_is_reverse_distillation_on_teacher_features(lite0_teacher: dict) -> None:
    model = _model(lite0_teacher, students="decoder")
    assert model.model.df_source == "teacher"
    assert model.model.encoder_student is None


def test_loss_is_pixel_cosine_distance_summed_over_students_and_scales() -> None:
    teacher = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([0]), 1.0)] * 2
    same = [t.clone() for t in teacher]
    orthogonal = [torch.zeros(1, 2, 4, 4).index_fill_(1, torch.tensor([1]), 1.0)] * 2
    assert PyramidMatchingLoss()(teacher, [same, same]).item() == pytest.approx(0.0, abs=1e-6)
    assert PyramidMatchingLoss()(teacher, [same, orthogonal]).item() == pytest.approx(2.0)  # 2 scales x 1


@pytest.mark.parametrize(("combination", "expected"), [("mean", 0.5), ("max", 1.0), ("multiply", 0.0)])
def test_anomaly_map_combines_students(combination: str, expected: float) -> None:
    teacher = [torch.zeros(1, 2, 8, 8).index_fill_(1, torch.tensor([0]), 1.0)]
    same = [teacher[0].clone()]
    orthogonal = [torch.zeros(1, 2, 8, 8).index_fill_(1, torch.tensor([1]), 1.0)]
    anomaly_map = DualStudentAnomalyMap((64, 64), student_combination=combination)(teacher, [same, orthogonal])
    assert anomaly_map.shape == (1, 1, 64, 64)
    assert torch.allclose(anomaly_map, torch.full_like(anomaly_map, expected), atol=1e-5)


def test_invalid_switches_name_the_argument(lite0_teacher: dict) -> None:
    with pytest.raises(ValueError, match="students"):
        _model(lite0_teacher, students="three")
    with pytest.raises(ValueError, match="df_source"):
        _model(lite0_teacher, df_source="elsewhere")
    with pytest.raises(ValueError, match="student_combination"):
        _model(lite0_teacher, student_combination="vote")
