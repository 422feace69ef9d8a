"""CUDA graphs for inference: record a function's kernel launches once per input signature, then replay them.

At batch 1 a DiT-B on a 1024 px pair is host-bound on a GPU: Python and the launch path of its ~1,500 small
kernels take longer than the kernels (H200: 48 ms of DiT time, as long on the CPU clock; docs/speed.md).
A CUDA graph replays the recorded launches in one call. `torch.compile(mode="reduce-overhead")` does the
same after a compile of minutes for the B preset; capturing the eager function takes one call.

Rules this relies on (torch.cuda.graphs): no CPU-GPU synchronisation and no data-dependent shapes inside
`fn` (the DiT and the codecs have none), static input and output memory (inputs are copied into the graph's
buffers, outputs are cloned out, so a caller may keep them across calls), and autocast without its weight
cache (a cached cast made outside the graph would be freed under it).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch


def _signature(args: tuple) -> tuple:
    sig = tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args)
    amp = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    return sig + (amp,)


def _clone_out(out: Any) -> Any:
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_out(o) for o in out)
    return out


class CUDAGraphed:
    """`CUDAGraphed(fn)(*args) == fn(*args)` for CUDA tensors and None/int arguments, without gradients.

    The first call with a new signature (argument shapes, dtypes, autocast state) runs `fn` `warmup` times on
    a side stream (cuDNN and cuBLAS pick their algorithms) and captures one more call; every call replays.
    Each signature holds its own graph and memory pool: an image size and each distinct tile shape add one.
    At most `max_graphs` are kept (a folder of images of many sizes would otherwise hold one pool per size):
    capturing one more drops the least recently replayed.
    """

    def __init__(self, fn: Callable, warmup: int = 2, max_graphs: int = 8):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.graphs: OrderedDict[tuple, tuple[list, Any, torch.cuda.CUDAGraph]] = OrderedDict()

    def __call__(self, *args):
        if torch.is_grad_enabled():
            raise RuntimeError("CUDAGraphed is for inference: call it under torch.no_grad()")
        for a in args:
            if torch.is_tensor(a) and a.device.type != "cuda":
                raise RuntimeError(f"CUDAGraphed needs CUDA tensors, got one on {a.device}")
        key = _signature(args)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)  # its graph, buffers and memory pool go with it
            self.graphs[key] = self._capture(args)
        static_in, static_out, graph = self.graphs[key]
        for buf, a in zip(static_in, args):
            if torch.is_tensor(buf):
                buf.copy_(a)
        graph.replay()
        return _clone_out(static_out)

    def _capture(self, args: tuple):
        static_in = [a.clone() if torch.is_tensor(a) else a for a in args]
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

        def amp():
            return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), amp():
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), amp():
            static_out = self.fn(*static_in)
        return static_in, static_out, graph
