"""The two private hooks the package relies on still behave as in the versions they were checked against.

- Lightning 2.6: ``DDPStrategy._ddp_kwargs`` reaches ``DistributedDataParallel`` (the models set
  ``find_unused_parameters`` there, see ``DistillationModule._let_ddp_skip_unused_parameters``).
- anomalib 2.7: INT8 post-training quantisation goes through the static method
  ``_post_training_quantization_ov(model, datamodule)``, which the models override to keep the map
  head and other accuracy-critical operations in FP32 (see ``anomalib_rdx.components.export.quantize_int8``).
"""

import inspect

import torch
import torch.distributed as dist
from anomalib.models.components import AnomalibModule
from lightning.pytorch.strategies import DDPStrategy

from anomalib_rdx.components import DistillationModule


def test_ddp_kwargs_reach_distributed_data_parallel(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        strategy = DDPStrategy(parallel_devices=[torch.device("cpu")])
        strategy._ddp_kwargs["find_unused_parameters"] = True
        wrapped = strategy._setup_model(torch.nn.Linear(2, 2))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert wrapped.find_unused_parameters is True
    finally:
        dist.destroy_process_group()


def test_anomalib_quantizes_through_the_overridden_static_method() -> None:
    compress = inspect.getsource(AnomalibModule._compress_ov_model)
    assert "self._post_training_quantization_ov(model, datamodule)" in compress
    parameters = list(inspect.signature(AnomalibModule._post_training_quantization_ov).parameters)
    assert parameters == ["model", "datamodule"]
    assert isinstance(inspect.getattr_static(DistillationModule, "_post_training_quantization_ov"), staticmethod)
