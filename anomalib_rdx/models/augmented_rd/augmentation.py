"""Augmentations of AugmentedRD (Nguyen, Bach & Trang, IMCOM 2023).

The paper names "augmentation techniques" without listing them. This set keeps the student's target
pixel-aligned with its input, because the student restores the raw features at every position:

- **photometric** changes (colour jitter, Gaussian blur, Gaussian noise) perturb appearance the way
  lighting, focus and sensor noise do on a production line;
- **anomaly-like patches** (anomalib's ``PerlinAnomalyGenerator``) paste textured Perlin-shaped
  regions, so the student learns to replace local defects by normal texture, which is what keeps real
  anomalies from being reconstructed;
- **geometric** flips are applied to the raw target too, so they only enlarge the training set and
  never misalign target and input.

Each is applied to each image independently with its own probability; with every probability at 0
the transformed image is the raw image and the model is plain reverse distillation.
"""

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torch import nn
from torchvision.transforms import v2


class RestorationAugmenter(nn.Module):
    """Make ``(raw, transformed)`` pairs for feature restoration.

    Args:
        color_jitter_probability: Probability of a brightness/contrast/saturation change.
        blur_probability: Probability of a Gaussian blur (kernel 5, sigma 0.1-2).
        noise_probability: Probability of additive Gaussian noise (sigma 0.05).
        anomaly_probability: Probability of a Perlin anomaly patch.
        flip_probability: Probability of a horizontal and (independently) a vertical flip, applied to
            raw and transformed image alike.
        anomaly_source_path: Folder of texture images (e.g. DTD) for the patches; Perlin noise when ``None``.
    """

    def __init__(
        self,
        color_jitter_probability: float = 0.5,
        blur_probability: float = 0.2,
        noise_probability: float = 0.2,
        anomaly_probability: float = 0.5,
        flip_probability: float = 0.0,
        anomaly_source_path: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in {
            "color_jitter_probability": color_jitter_probability,
            "blur_probability": blur_probability,
            "noise_probability": noise_probability,
            "anomaly_probability": anomaly_probability,
            "flip_probability": flip_probability,
        }.items():
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must be in [0, 1], got {value}."
                raise ValueError(msg)
        self.color_jitter_probability = color_jitter_probability
        self.blur_probability = blur_probability
        self.noise_probability = noise_probability
        self.flip_probability = flip_probability
        self.color_jitter = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)
        self.blur = v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))
        self.noise = v2.GaussianNoise(sigma=0.05, clip=True)
        self.anomaly_generator = PerlinAnomalyGenerator(
            anomaly_source_path=anomaly_source_path,
            probability=anomaly_probability,
        )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation can change the input."""
        return any(
            p > 0
            for p in (
                self.color_jitter_probability,
                self.blur_probability,
                self.noise_probability,
                self.anomaly_generator.probability,
                self.flip_probability,
            )
        )

    @staticmethod
    def _maybe(probability: float) -> bool:
        return probability > 0 and bool(torch.rand(()) < probability)

    def _flip(self, image: torch.Tensor) -> torch.Tensor:
        if self._maybe(self.flip_probability):
            image = image.flip(-1)
        if self._maybe(self.flip_probability):
            image = image.flip(-2)
        return image

    def _transform(self, image: torch.Tensor) -> torch.Tensor:
        if self._maybe(self.color_jitter_probability):
            image = self.color_jitter(image)
        if self._maybe(self.blur_probability):
            image = self.blur(image)
        if self._maybe(self.noise_probability):
            image = self.noise(image)
        return image

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(raw, transformed)`` batches of ``[0, 1]`` images, pixel-aligned."""
        if not self.enabled:
            return images, images
        raw = torch.stack([self._flip(image) for image in images])
        transformed = torch.stack([self._transform(image) for image in raw])
        transformed, _ = self.anomaly_generator(transformed)
        return raw, transformed.clamp(0, 1)
