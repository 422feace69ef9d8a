"""`train.strategy=fsdp`: fully sharded data parallel training of the DiT (FSDP2, `torch.distributed.fsdp.fully_shard`).

Lightning's own `fsdp` strategy is FSDP1: it wraps the module in flat parameters, runs on CUDA only, and with one
wrapped unit per module the EMA copy of the DiT would not be split into shards the way the DiT is, so the EMA update
(`callbacks.update_ema`, a lerp of each EMA parameter towards its DiT twin) would pair unrelated pieces. FSDP2 shards
each parameter on its first dimension (a DTensor) within the unit it belongs to. Sharding the DiT and its EMA copy
block by block in the same way gives each EMA shard the same rows as its DiT shard, so the update stays a pointwise
lerp on the local shards; a rank gathers one block (and the root unit) at a time, never the whole model. The frozen
codec and text encoder are not in the module's registry (lit/fusion.py) and stay whole on every rank.

Through Lightning's `ModelParallelStrategy` (the FSDP2 route), with every process one data-parallel rank and the
checkpoint assembled on rank 0 as one file, the same file a single-device run writes.
"""
from __future__ import annotations

import warnings

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from ..errors import ConfigError


class ShardedDataParallel(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP: a world x 1 mesh (every rank data-parallel, no tensor
    parallelism), one full checkpoint file on rank 0 (what `mmaif fuse`, the evaluation and `--resume` read)."""

    def __init__(self, **kwargs):
        super().__init__(save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        # every process is a data-parallel rank; known here, after the connector set the devices and nodes
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def resolve_strategy(name):
    """`train.strategy` -> what the Trainer gets: `fsdp` is `ShardedDataParallel`; Lightning's other sharding
    strategies are refused (their flat parameters would split the DiT and its EMA differently); any other name passes
    through."""
    if name == "fsdp":
        return ShardedDataParallel()
    if isinstance(name, str) and (name.startswith("fsdp_") or name.startswith("deepspeed_stage_3")):
        raise ConfigError(f"train.strategy={name} shards the model with flat parameters, which split the DiT and its "
                          f"EMA copy differently, so the EMA update would pair unrelated pieces; use "
                          f"train.strategy=fsdp (FSDP2, the DiT and its EMA sharded alike)")
    return name


def shard_dit(dit: nn.Module, mesh) -> None:
    """Shard a FusionDiT in place: each block its own unit (its parameters gathered just before it runs and freed
    after), then the rest of the DiT (embeddings, final layer) as the root unit."""
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns that a unit returning a view loses its pre-backward hook if the view is then changed in place.
    # No caller changes a block's or the DiT's output in place; tests/test_ddp.py holds FSDP's weights to DDP's.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPFusionDiT(Block)?\) returned a view")
    for block in dit.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(dit, mesh=mesh)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)
