"""Train with ``train.strategy=fsdp`` on the CPU, one process over gloo: ``python tests/train/fsdp_cpu.py
<overrides>`` (used by ``test_fsdp.py``; not a test itself).

Two stand-ins, both only for running without a GPU: Lightning refuses FSDP unless the accelerator is
a GPU (it checks ``type(strategy) is FSDPStrategy``, so a subclass passes), and Lightning hands FSDP
``device_id=None`` on the CPU, which torch's FSDP rejects ("needs a non-CPU accelerator"), so the
subclass passes ``device_id=cpu``. Everything else is the harness's own FSDP path: the strategy
from ``lightning_strategy`` (auto-wrap policy, full-state checkpoints), the EMA unit, validation
through the sharded root, gradient clipping through ``clip_grad_norm_``."""
import sys

import torch
from lightning.pytorch.strategies import FSDPStrategy

import harness.train.run as T
from harness import config as C


class CPUFSDP(FSDPStrategy):
    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy,
                                        device_id=torch.device("cpu"), **self.kwargs)


def cpu_strategy(cfg, real=T.lightning_strategy):
    strategy = real(cfg)
    assert type(strategy) is FSDPStrategy, strategy
    strategy.__class__ = CPUFSDP
    return strategy


if __name__ == "__main__":
    T.lightning_strategy = cpu_strategy
    cfg = C.load([*sys.argv[1:], "train.strategy=fsdp", "train.accelerator=gpu"])
    cfg.train.accelerator = "cpu"  # after validation, which (rightly) wants a GPU for fsdp
    print(T.train(cfg))
