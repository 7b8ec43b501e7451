"""Inference switches with the papers' values as defaults: image score, map reference, border padding, flips."""

from pathlib import Path

import pytest
import torch
from anomalib.models.components import AnomalibModule

from anomalib_rdx import AugmentedRD, DualStudentKD, RDExpert
from anomalib_rdx.components import SeparableGaussianBlur
from anomalib_rdx.components.network import image_score_from_map

from .openvino_helpers import export_openvino_ir


def assert_same_training_features(reference: AnomalibModule, switched: AnomalibModule, images: torch.Tensor) -> None:
    """An inference switch leaves the training features alone; both networks are left in evaluation mode."""
    reference.model.train(), switched.model.train()
    with torch.no_grad():
        for expected, actual in zip(reference.model(images)[0], switched.model(images)[0], strict=True):
            torch.testing.assert_close(actual, expected)
    reference.model.eval(), switched.model.eval()


def test_max_and_top_k_mean_scores() -> None:
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 0, 0] = 1.0  # one bright pixel
    maps[1, 0, :2, :5] = 0.5  # a region of 10 pixels at half the brightness
    assert image_score_from_map(maps, "max").tolist() == [[1.0], [0.5]]
    # Top 10% of 100 pixels = 10 pixels: the region outranks the single pixel.
    assert image_score_from_map(maps, "top_k_mean", 0.1).flatten().tolist() == pytest.approx([0.1, 0.5])


@pytest.mark.parametrize("model_class", [RDExpert, AugmentedRD, DualStudentKD])
def test_papers_score_is_the_default_and_top_k_is_a_switch(
    model_class: type, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    size = model_class.configure_pre_processor((64, 64))
    paper = model_class(**lite0_teacher, pre_processor=size).eval()
    top_k = model_class(**lite0_teacher, pre_processor=size, image_score="top_k_mean", top_k_share=0.05).eval()
    top_k.model.load_state_dict(paper.model.state_dict())
    with torch.no_grad():
        paper_output, top_k_output = paper.model(sample_images), top_k.model(sample_images)
    torch.testing.assert_close(paper_output.anomaly_map, top_k_output.anomaly_map)
    torch.testing.assert_close(paper_output.pred_score, paper_output.anomaly_map.flatten(1).amax(1, keepdim=True))
    torch.testing.assert_close(
        top_k_output.pred_score, image_score_from_map(top_k_output.anomaly_map, "top_k_mean", 0.05)
    )
    assert (top_k_output.pred_score < paper_output.pred_score).all()


def test_map_reference_both_is_teacher_plus_expert_map(lite0_teacher: dict, sample_images: torch.Tensor) -> None:
    size = RDExpert.configure_pre_processor((64, 64))
    models = {reference: RDExpert(**lite0_teacher, pre_processor=size, map_reference=reference).eval()
              for reference in ("teacher", "expert", "both")}  # fmt: skip
    state = models["teacher"].model.state_dict()
    # Make teacher and expert differ, as training does.
    state = {key: value + 0.01 if key.startswith("teacher.") and value.is_floating_point() else value
             for key, value in state.items()}  # fmt: skip
    maps = {}
    for reference, model in models.items():
        model.model.load_state_dict(state)
        with torch.no_grad():
            maps[reference] = model.model(sample_images).anomaly_map
    assert not torch.allclose(maps["teacher"], maps["expert"])
    torch.testing.assert_close(maps["both"], maps["teacher"] + maps["expert"])
    assert models["teacher"].TRAINING_ONLY_PREFIXES == ("model.expert.",)
    assert models["both"].TRAINING_ONLY_PREFIXES == ()


def test_map_reference_default_follows_the_expert(lite0_teacher: dict) -> None:
    assert RDExpert(**lite0_teacher).model.map_reference == "both"
    assert RDExpert(**lite0_teacher, use_expert=False).model.map_reference == "teacher"
    assert RDExpert(**lite0_teacher).hparams["map_reference"] == "both"  # the checkpoint records the choice


def test_map_reference_needs_the_expert(lite0_teacher: dict) -> None:
    with pytest.raises(ValueError, match="map_reference='expert' compares with the expert"):
        RDExpert(**lite0_teacher, use_expert=False, map_reference="expert")
    with pytest.raises(ValueError, match="map_reference must be one of"):
        RDExpert(**lite0_teacher, map_reference="student")


@pytest.mark.parametrize("model_class", [RDExpert, AugmentedRD, DualStudentKD])
def test_border_padding_keeps_the_map_size_and_changes_only_inference(
    model_class: type, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    size = model_class.configure_pre_processor((64, 64))
    plain = model_class(**lite0_teacher, pre_processor=size)
    padded = model_class(**lite0_teacher, pre_processor=size, border_padding=16)
    padded.model.load_state_dict(plain.model.state_dict())
    assert_same_training_features(plain, padded, sample_images)  # no padding in training
    with torch.no_grad():
        plain_map, padded_map = plain.model(sample_images).anomaly_map, padded.model(sample_images).anomaly_map
    assert padded_map.shape == plain_map.shape == (len(sample_images), 1, 64, 64)
    assert not torch.allclose(plain_map, padded_map)


def test_border_padding_that_breaks_the_strides_is_refused(lite0_teacher: dict) -> None:
    with pytest.raises(ValueError, match="border_padding makes the image"):
        AugmentedRD(**lite0_teacher, pre_processor=AugmentedRD.configure_pre_processor((64, 64)), border_padding=8)


@pytest.mark.parametrize("model_class", [RDExpert, AugmentedRD, DualStudentKD])
def test_map_sigma_is_the_smoothing_of_the_served_map(
    model_class: type, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    """Gaussians compose (sigma 2, then sigma sqrt(12), is sigma 4): away from the borders the paper's map is
    the ``map_sigma=2`` map blurred once more, so the switch sets the smoothing and nothing else."""
    size = model_class.configure_pre_processor((64, 64))
    paper = model_class(**lite0_teacher, pre_processor=size).eval()
    sharper = model_class(**lite0_teacher, pre_processor=size, map_sigma=2).eval()
    sharper.model.load_state_dict(paper.model.state_dict())
    assert_same_training_features(paper, sharper, sample_images)
    with torch.no_grad():
        paper_output, sharper_output = paper.model(sample_images), sharper.model(sample_images)
        reblurred = SeparableGaussianBlur(12**0.5)(sharper_output.anomaly_map)
    interior = (..., slice(24, -24), slice(24, -24))  # reflected borders of both blurs reach 8 + 14 pixels in
    torch.testing.assert_close(reblurred[interior], paper_output.anomaly_map[interior], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sharper_output.anomaly_map, paper_output.anomaly_map)
    torch.testing.assert_close(
        sharper_output.pred_score, sharper_output.anomaly_map.flatten(1).amax(1, keepdim=True)
    )  # the score is read from the map it serves
    assert sharper.hparams.map_sigma == 2
    with pytest.raises(ValueError, match="map_sigma must be a positive"):
        model_class(**lite0_teacher, pre_processor=size, map_sigma=0)


FLIPS = {"horizontal": [(-1,)], "vertical": [(-2,)], "all": [(-1,), (-2,), (-2, -1)]}


@pytest.mark.parametrize("model_class", [RDExpert, AugmentedRD, DualStudentKD])
@pytest.mark.parametrize(("flips", "scope"), [("horizontal", "map"), ("all", "map_and_score")])
def test_time_flips_average_the_maps_of_the_mirror_images(
    model_class: type, flips: str, scope: str, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    size = model_class.configure_pre_processor((64, 64))
    single = model_class(**lite0_teacher, pre_processor=size)
    flipped = model_class(**lite0_teacher, pre_processor=size, test_time_flips=flips, flip_scope=scope)
    flipped.model.load_state_dict(single.model.state_dict())
    assert_same_training_features(single, flipped, sample_images)  # one view in training
    with torch.no_grad():
        output = flipped.model(sample_images)
        views = [single.model(sample_images).anomaly_map]
        views += [single.model(sample_images.flip(dims)).anomaly_map.flip(dims) for dims in FLIPS[flips]]
        # Mirror images of the input give the mirror images of the averaged map: the views form a group.
        mirrored = [flipped.model(sample_images.flip(dims)).anomaly_map.flip(dims) for dims in FLIPS[flips]]
    expected = torch.stack(views).mean(dim=0)
    assert output.anomaly_map.shape == (len(sample_images), 1, 64, 64)
    torch.testing.assert_close(output.anomaly_map, expected)
    assert not torch.allclose(output.anomaly_map, views[0])
    scored_map = output.anomaly_map if scope == "map_and_score" else views[0]  # "map": the image's own score
    torch.testing.assert_close(output.pred_score, scored_map.flatten(1).amax(1, keepdim=True))
    for mirror in mirrored:
        torch.testing.assert_close(mirror, output.anomaly_map)


def test_time_flips_combine_with_border_padding_and_refuse_unknown_values(
    lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    size = AugmentedRD.configure_pre_processor((64, 64))
    model = AugmentedRD(**lite0_teacher, pre_processor=size, border_padding=16, test_time_flips="vertical").eval()
    with torch.no_grad():
        output = model.model(sample_images)
    assert output.anomaly_map.shape == (len(sample_images), 1, 64, 64)
    assert output.pred_score.shape == (len(sample_images), 1)
    with pytest.raises(ValueError, match="test_time_flips must be one of"):
        AugmentedRD(**lite0_teacher, pre_processor=size, test_time_flips="diagonal")
    with pytest.raises(ValueError, match="flip_scope must be one of"):
        AugmentedRD(**lite0_teacher, pre_processor=size, test_time_flips="all", flip_scope="score")


def test_time_flips_export_to_openvino_with_pytorchs_outputs(
    tmp_path: Path, lite0_teacher: dict, sample_images: torch.Tensor
) -> None:
    # The views, the flips back and the average are part of the graph the edge device runs.
    import openvino as ov

    size = AugmentedRD.configure_pre_processor((64, 64))
    model = AugmentedRD(**lite0_teacher, pre_processor=size, post_processor=False, test_time_flips="all").eval()
    compiled = ov.Core().compile_model(export_openvino_ir(model, tmp_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    served = compiled(sample_images.numpy())
    with torch.no_grad():
        expected = model.model(sample_images)
    names = [output.get_any_name() for output in compiled.outputs]
    served_map = served[compiled.outputs[names.index("anomaly_map")]]
    served_score = served[compiled.outputs[names.index("pred_score")]]
    torch.testing.assert_close(torch.from_numpy(served_map), expected.anomaly_map, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(served_score).reshape(-1, 1), expected.pred_score, atol=1e-4, rtol=1e-4)
