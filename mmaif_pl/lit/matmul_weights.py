"""The DiT's matmul weights cast to bf16 once per training step, for all layers in one multi-tensor copy.

Under bf16 autocast every Linear and Conv2d casts its float32 weight and bias to bf16 on each call, one kernel per
tensor (490 of the 1 888 kernels of a B training forward), and the backward casts each bf16 gradient back to
float32, one kernel per tensor again. `CastMatmulWeights` does each of the two for all layers at once:

    forward:   W_bf16 = bf16(W)           for every matmul weight and bias, one torch._foreach_copy_
    backward:  dL/dW  = float32(dL/dW_bf16),                                 one torch._foreach_copy_

and runs the DiT on the bf16 copies (torch.func.functional_call). These are autocast's own values: the same
rounding of the same float32 masters (autocast leaves a tensor that is already bf16 alone), the same bf16
gradients widened. So a training step gives the same bits (tests/test_lit.py). The parameters, the optimizer, the
EMA and the checkpoints keep the float32 masters; only the kernels that cast them change. Which tensors: those
`fuse.store_matmul_weights` stores in bf16 for inference, where the same argument is tested bit-exact.

It pays on CUDA, whose multi-tensor copy casts between dtypes in one kernel family; the CPU's copies one tensor at
a time, so there it only adds `functional_call`'s swap (docs/speed.md). FusionModule takes it on CUDA only.
"""
from __future__ import annotations

import torch
from torch import nn


# The layers whose weight and bias bf16 autocast casts on every call (fuse.store_matmul_weights stores the same ones)
MATMUL_LAYERS = (nn.Linear, nn.Conv2d)


def matmul_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable weights and biases of `module`'s matmul layers (MATMUL_LAYERS), by name."""
    out = []
    for prefix, m in module.named_modules():
        if isinstance(m, MATMUL_LAYERS):
            out += [(f"{prefix}.{n}" if prefix else n, p) for n, p in m.named_parameters(recurse=False)
                    if p.requires_grad]
    return out


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
    """`module` called on bf16 copies of its matmul weights, made once per call (see the module docstring)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.module, self.dtype = module, dtype
        pairs = matmul_parameters(module)
        self.names, self.masters = [n for n, _ in pairs], [p for _, p in pairs]

    def __call__(self, *args, **kwargs):
        if not self.masters:
            return self.module(*args, **kwargs)
        if self.module.get_parameter(self.names[0]) is not self.masters[0]:  # replaced (load_state_dict(assign=True))
            self.__init__(self.module, self.dtype)
        low = CastToLowPrecision.apply(self.dtype, *self.masters)
        return torch.func.functional_call(self.module, dict(zip(self.names, low)), args, kwargs)


def bf16_autocast_on(device: torch.device) -> bool:
    """Whether bf16 autocast is on for `device` (Lightning's bf16-mixed): where CastMatmulWeights gives autocast's
    values. Under float32 the weights must stay float32."""
    kind = device.type
    return (torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
            and torch.get_autocast_dtype(kind) == torch.bfloat16)
