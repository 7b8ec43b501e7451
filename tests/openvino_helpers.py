"""Helpers for tests that read exported OpenVINO graphs."""

from pathlib import Path

import openvino as ov
from anomalib.models.components import AnomalibModule


def export_openvino_ir(model: AnomalibModule, export_root: Path) -> ov.Model:
    """Export ``model`` with anomalib's ``to_openvino`` (FP32) and read the IR back."""
    model.to_openvino(export_root=export_root)
    return ov.Core().read_model(next(export_root.rglob("model.xml")))


def quantised_inputs(model: ov.Model, names: set[str] | list[str]) -> list[str]:
    """The operations among ``names`` that read values (not only a shape) from a FakeQuantize.

    A weight's FakeQuantize may sit behind a ``Convert``; that counts as quantised too.
    """
    wanted = set(names)
    found = []
    for op in model.get_ops():
        if op.get_friendly_name() not in wanted or op.get_type_name() == "ShapeOf":
            continue
        for value in op.inputs():
            source = value.get_source_output().get_node()
            if source.get_type_name() == "Convert":
                source = source.input(0).get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize":
                found.append(op.get_friendly_name())
                break
    return found
