"""The FSDP preset's strategy on CPU processes over gloo, for the tests (trainer.strategy._target_=fsdp_cpu.strategy).

Lightning hands FSDP the device index of its root device, which is None on CPU, and torch's FSDP
then looks for an accelerator and refuses ("FSDP needs a non-CPU accelerator device"). Given the
CPU device itself, FSDP runs: this strategy differs from `AtomicFSDPStrategy` only there.
"""

import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from omni_train.resume import AtomicFSDPStrategy, fsdp_strategy


class CpuFSDPStrategy(AtomicFSDPStrategy):
    def _setup_model(self, model):
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return model
        return FullyShardedDataParallel(
            model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )  # fmt: skip


def strategy(**kwargs) -> CpuFSDPStrategy:
    """The preset's strategy (`fsdp_strategy`: its wrap policy, sharded checkpoints), made to run on CPU."""
    preset = fsdp_strategy(**kwargs)
    preset.__class__ = CpuFSDPStrategy  # the same object and settings; only `_setup_model` differs
    return preset
