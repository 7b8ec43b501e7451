"""ImageNet normalisation inside the model.

The models of this package synthesise anomalies and augmentations on images in ``[0, 1]`` (as
anomalib's ``PerlinAnomalyGenerator`` expects), so their pre-processor only resizes and the model
normalises for its ImageNet-pretrained teacher itself. The step is part of the exported graph.
"""

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalization(nn.Module):
    """Normalise ``[0, 1]`` RGB images with ImageNet statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a batch ``(B, 3, H, W)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            msg = f"Expected a batch of RGB images (B, 3, H, W), got shape {tuple(images.shape)}."
            raise ValueError(msg)
        return (images - self.mean) / self.std
