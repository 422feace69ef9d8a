import os
import traceback
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parent.parent
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}  # Trainer kwargs
SHARED_DATASETS = Path(os.environ.get("MMAIF_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_dataset(rel: str) -> Path:
    """A real benchmark sample folder, or a clean skip where it is absent (a fresh clone elsewhere)."""
    path = SHARED_DATASETS / rel
    if not path.is_dir():
        pytest.skip(f"real sample data not present: {path}")
    return path


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """A small embedded default dataset built by the project's own code (same generator, fewer pairs)."""
    from mmaif_pl.data.synth import build

    out = tmp_path_factory.mktemp("embedded") / "data"
    build(out, counts={"train": 6, "test": 3}, log=lambda *a, **k: None)
    return out


def text_encoder():
    """The packaged MiniLM, or the one MMAIF_TEST_TEXT_ENCODER names (the GPU benchmark machine has a
    same-architecture stand-in, benchmarks/gpu_check.sh)."""
    from mmaif_pl.models.text import TextEncoder

    path = os.environ.get("MMAIF_TEST_TEXT_ENCODER")
    return TextEncoder(path) if path else TextEncoder()


def text_encoder_overrides() -> list[str]:
    """Config overrides naming text_encoder()'s encoder, for a checkpoint that a command loads again."""
    path = os.environ.get("MMAIF_TEST_TEXT_ENCODER")
    return [f"text.encoder={path}"] if path else []


def randomize(module, std=0.02):
    """Random values in place of a model's zero-initialised tensors (adaLN up-projections, gates, output
    layer, block PE), so a test model's output depends on every part."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0, std)


def random_basis(codec):
    """An orthonormal random basis in place of the linear codec's PCA fit."""
    import torch

    codec.linear.basis.copy_(torch.linalg.qr(torch.randn(codec.linear.basis.shape[1], codec.channels))[0].T)


def small_fusion_module(overrides: list[str], text, codec: str = "linear"):
    """A small FusionModule, seeded: a linear (or a small AutoencoderTiny) f4 x 16 codec with a random basis,
    the DiT the overrides describe, random values in the EMA DiT's zero-initialised tensors."""
    import torch

    from mmaif_pl.config import load
    from mmaif_pl.lit.fusion import build_module
    from mmaif_pl.models.codec import LatentCodec

    torch.manual_seed(0)
    blocks = {} if codec == "linear" else {"block_channels": [16, 16, 16]}
    latent = LatentCodec(codec, 4, 16, **blocks).eval()
    random_basis(latent)
    m = build_module(load([], overrides), latent, text).eval()
    randomize(m.ema)
    return m


class HostReads(TorchDispatchMode):
    """Host reads (`.item()` and the like) of tensors computed in the current training step, by step. On a GPU
    each waits for the GPU to finish what the host has queued, so the loop cannot run ahead of it. Reads by the
    optimizer (AdamW's step counters) and the data loader (its sampler) are left out: those tensors live on
    the host in a GPU run too. A view of an older tensor (detach) is not new."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.equal.default}

    def __init__(self):
        super().__init__()
        self.made, self.step, self.reads = {}, None, []

    def steps(self):
        """A Lightning callback that starts each step's record at its batch and stops at the end of training."""
        import lightning as L

        reads = self

        class Steps(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                reads.made.clear()
                reads.step = trainer.global_step

            def on_train_end(self, trainer, *args):
                reads.step = None

        return Steps()

    def new(self, t) -> bool:
        ref = self.made.get(id(t))
        return ref is not None and ref() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.step is None:
            return out
        if func in self.READS and self.new(args[0]):
            where = [f.filename for f in traceback.extract_stack()]
            if not any("/optim/" in f or "/utils/data/" in f for f in where):
                self.reads.append(self.step)
        if not func.is_view or self.new(args[0]):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.made[id(t)] = weakref.ref(t)
        return out
