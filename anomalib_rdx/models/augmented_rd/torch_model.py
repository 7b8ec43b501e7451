"""PyTorch model of AugmentedRD (Nguyen, Bach & Trang, IMCOM 2023).

"An Improved Reverse Distillation Model for Unsupervised Anomaly Detection": the frozen teacher encodes
the raw image (*raw representation*) and a transformed copy (*transformed representation*); the
one-class bottleneck and the student decoder take the transformed representation and must restore the
raw one at every scale. Inference is plain reverse distillation on the raw image.
"""

from collections.abc import Sequence

import torch

from anomalib_rdx.components import flat_cosine_distance
from anomalib_rdx.components.reverse_distillation import ReverseDistillationNetwork


class AugmentedRDModel(ReverseDistillationNetwork):
    """Reverse distillation whose student restores raw features from transformed input.

    Arguments as :class:`~anomalib_rdx.components.reverse_distillation.ReverseDistillationNetwork`; the
    teacher is always frozen.
    """

    def restoration_features(
        self,
        raw_images: torch.Tensor,
        transformed_images: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Raw teacher features (the target) and the student's restoration from transformed features."""
        with torch.no_grad():
            raw_features = self.teacher_features(self.normalize(raw_images))
            transformed_features = (
                raw_features
                if transformed_images is raw_images
                else self.teacher_features(self.normalize(transformed_images))
            )
        return raw_features, self.student_features(transformed_features)

    @staticmethod
    def restoration_loss(raw_features: Sequence[torch.Tensor], restored: Sequence[torch.Tensor]) -> torch.Tensor:
        """Reverse distillation's cosine distance per scale, against the raw representation."""
        return flat_cosine_distance(list(raw_features), list(restored))
