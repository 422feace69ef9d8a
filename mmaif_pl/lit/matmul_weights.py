"""The DiT's matmul weights cast to bf16 once per training step, each block's in one multi-tensor copy.

Under bf16 autocast every Linear and Conv2d casts its float32 weight and bias to bf16 on each call, one kernel per
tensor (490 of the 1 888 kernels of a B training forward), and the backward casts each bf16 gradient back to
float32, one kernel per tensor again. `CastMatmulWeights` does each of the two for a block's layers at once:

    forward:   W_bf16 = bf16(W)           for every matmul weight and bias of the block, one torch._foreach_copy_
    backward:  dL/dW  = float32(dL/dW_bf16),                                            one torch._foreach_copy_

and runs the DiT on the bf16 copies (torch.func.functional_call; a block's copies are made and put in when its
forward starts, so that its gradients are ready for DDP as soon as its backward ends). These are autocast's own
values: the same rounding of the same float32 masters (autocast leaves a tensor that is already bf16 alone), the
same bf16 gradients widened. So a training step gives the same bits (tests/test_lit.py). The parameters, the
optimizer, the EMA and the checkpoints keep the float32 masters; only the kernels that cast them change. Which
tensors: those `fuse.store_matmul_weights` stores in bf16 for inference, where the same argument is tested
bit-exact.

It pays on CUDA, whose multi-tensor copy casts between dtypes in one kernel family; the CPU's copies one tensor at
a time, so there it only adds `functional_call`'s swap (docs/speed.md). FusionModule takes it on CUDA only.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.layers import autocast_on


# The layers whose weight and bias bf16 autocast casts on every call (fuse.store_matmul_weights stores the same ones)
MATMUL_LAYERS = (nn.Linear, nn.Conv2d)


def matmul_slots(module: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """(layer name, layer, attribute, parameter) of each trainable weight and bias of `module`'s matmul layers."""
    return [(prefix, m, n, p) for prefix, m in module.named_modules() if isinstance(m, MATMUL_LAYERS)
            for n, p in m.named_parameters(recurse=False) if p.requires_grad]


def matmul_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable weights and biases of `module`'s matmul layers (MATMUL_LAYERS), by name."""
    return [(f"{prefix}.{n}" if prefix else n, p) for prefix, _, n, p in matmul_slots(module)]


class CastToLowPrecision(torch.autograd.Function):
    """(dtype, *masters) -> the masters in dtype, one multi-tensor copy each way. The gradient of an unused copy
    stays None (as the master's would: AdamW skips it), not zeros."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *masters: torch.Tensor):
        ctx.set_materialize_grads(False)
        ctx.master_dtypes = [m.dtype for m in masters]
        low = [torch.empty_like(m, dtype=dtype) for m in masters]
        torch._foreach_copy_(low, list(masters))  # CUDA: one multi-tensor kernel family, the cast included
        return tuple(low)

    @staticmethod
    def backward(ctx, *grads):
        present = [(g, d) for g, d in zip(grads, ctx.master_dtypes) if g is not None]
        wide = [torch.empty_like(g, dtype=d) for g, d in present]
        if present:
            torch._foreach_copy_(wide, [g for g, _ in present])
        wide = iter(wide)
        return (None, *(next(wide) if g is not None else None for g in grads))


class CastMatmulWeights:
    """`module` called on bf16 copies of its matmul weights, made once per call (see the module docstring).

    `units` (the DiT's blocks and final layer) have their weights cast at the start of their own forward, one copy
    per unit, instead of with the rest before the module's. The autograd engine runs the ready node made last first,
    so a cast made before the forward runs its backward, the widening into the float32 gradients, only after every
    block's backward: DDP could not all-reduce any gradient before the backward had ended. Made at a unit's start,
    the cast's backward runs right after the unit's, and DDP's buckets fill while the backward goes on below it."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16, units: Sequence[nn.Module] = ()):
        self.module, self.dtype, self.units = module, dtype, list(units)
        # (layer, attribute, master) of each unit's matmul weights: where its copies are put in
        self.unit_slots = [[(m, n, p) for _, m, n, p in matmul_slots(unit)] for unit in self.units]
        in_units = {id(master) for slots in self.unit_slots for _, _, master in slots}
        pairs = [(n, p) for n, p in matmul_parameters(module) if id(p) not in in_units]
        self.names, self.masters = [n for n, _ in pairs], [p for _, p in pairs]
        self.active = False  # the hooks cast only inside this wrapper's call: the module called directly is plain
        self.hooks = [hook for unit, slots in zip(self.units, self.unit_slots) if slots
                      for hook in (unit.register_forward_pre_hook(self._swap_in(slots)),
                                   unit.register_forward_hook(self._swap_out(slots), always_call=True))]

    def __call__(self, *args, **kwargs):
        if self.replaced():  # load_state_dict(assign=True) put new parameters in: follow them
            self.remove()
            self.__init__(self.module, self.dtype, self.units)
        low = CastToLowPrecision.apply(self.dtype, *self.masters) if self.masters else ()
        self.active = True
        try:
            return torch.func.functional_call(self.module, dict(zip(self.names, low)), args, kwargs)
        finally:
            self.active = False

    def replaced(self) -> bool:
        """Whether the module holds other parameters than the masters (all are replaced at once: one is checked
        per group)."""
        firsts = [(self.module.get_parameter(n), p) for n, p in zip(self.names[:1], self.masters)]
        firsts += [(getattr(owner, name), master) for slots in self.unit_slots for owner, name, master in slots[:1]]
        return any(now is not master for now, master in firsts)

    def remove(self):
        for hook in self.hooks:
            hook.remove()

    def _swap_in(self, slots):
        @torch.compiler.disable  # eager, before a compiled unit's graph, which takes the copies as its inputs
        def hook(unit, args):
            if self.active:
                low = CastToLowPrecision.apply(self.dtype, *(master for _, _, master in slots))
                for (owner, name, _), copy in zip(slots, low):
                    owner._parameters[name] = copy
        return hook

    def _swap_out(self, slots):
        @torch.compiler.disable
        def hook(unit, args, out):
            if self.active:
                for owner, name, master in slots:
                    owner._parameters[name] = master
        return hook


def dit_units(dit: nn.Module) -> list[nn.Module]:
    """The FusionDiT's units for CastMatmulWeights: its blocks and its final layer, whose backwards run one after
    another (the embedders' weights are cast with the rest, before the forward: their gradients come last anyway)."""
    return [*dit.blocks, dit.final]


def bf16_autocast_on(device: torch.device) -> bool:
    """Whether bf16 autocast is on for `device` (Lightning's bf16-mixed): where CastMatmulWeights gives autocast's
    values. Under float32 the weights must stay float32."""
    return autocast_on(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16
