"""Multi-process training from config only: two CPU processes, DDP over gloo, through `run_training`.

The config says `train.strategy=ddp train.accelerator=cpu train.devices=2`; nothing else changes. Lightning's
DDP launcher starts the second rank by re-running the script, so the training runs in a small script of its
own (not inside pytest). Each rank saves its weights; after a few optimizer steps both ranks must hold
identical DiT and EMA weights, and the weights must have moved from their initialisation.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from mmaif_pl.config import load
    from mmaif_pl.lit.commands import run_training
    from mmaif_pl.lit.fusion import FusionModule

    FusionModule.cast_matmul_weights = True  # as on CUDA: under bf16-mixed the one multi-tensor cast, else nothing

    root = Path(sys.argv[1])
    cfg = load([], [f"data.root={root / 'data'}", f"data.prepared={root / 'prepared'}", "data.crop=32",
                    "data.batch_size=2", "data.num_workers=0", "data.samples_per_epoch=16", "data.eval_crop=32",
                    "codec.kind=linear", "codec.fit_batches=2", "model.hidden=64", "model.depth=2", "model.heads=2",
                    "model.pe_grid=8", "train.max_steps=3", "train.warmup_steps=1", "train.val_every=3",
                    "train.val_batches=1", "train.log_every=1", "train.lr=1e-3", "train.ema_decay=0.5",
                    f"train.out_dir={root / 'runs'}", f"train.name=ddp_{sys.argv[2]}", f"train.precision={sys.argv[2]}",
                    "train.strategy=ddp", "train.accelerator=cpu", "train.devices=2"])
    module, trainer, run_dir = run_training(cfg, trainer_kwargs={"enable_progress_bar": False,
                                                                 "enable_model_summary": False},
                                            log=lambda *a: None)
    rank = trainer.global_rank
    torch.save({"dit": module.dit.state_dict(), "ema": module.ema.state_dict()}, root / f"rank{rank}.pt")
    (root / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": trainer.world_size,
                                                       "step": trainer.global_step,
                                                       "strategy": type(trainer.strategy).__name__,
                                                       "cast_weights": getattr(module, "_matmul_casts", None) is not None}))
""")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """4 training and 2 test pairs per task, and a prepared validation split (what `mmaif data prepare` writes)."""
    from mmaif_pl.config import load
    from mmaif_pl.data.prepare import prepare
    from mmaif_pl.data.synth import build

    root = tmp_path_factory.mktemp("ddp")
    build(root / "data", counts={"train": 4, "test": 2}, log=lambda *a, **k: None)
    cfg = load([], [f"data.root={root / 'data'}", "data.val_samples=1", "data.eval_crop=32"])
    prepare(cfg, root / "prepared", splits=("val",), log=lambda *a: None)
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ddp_two_cpu_ranks_hold_identical_weights(tiny_data, precision):
    """32-true, as the CPU pipeline trains; bf16-mixed, as a GPU run trains, where the gradients reach DDP through
    the one multi-tensor cast of the matmul weights (lit/matmul_weights.py)."""
    for old in tiny_data.glob("rank*"):
        old.unlink()
    script = tiny_data / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(script), str(tiny_data), precision], cwd=tiny_data, env=env,
                         capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])

    infos = [json.loads((tiny_data / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["step"] == 3 for i in infos), infos
    assert all(i["strategy"] == "DDPStrategy" for i in infos), infos
    assert all(i["cast_weights"] == (precision == "bf16-mixed") for i in infos), infos

    w0, w1 = (torch.load(tiny_data / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("dit", "ema"):
        assert w0[part].keys() == w1[part].keys()
        for k in w0[part]:
            torch.testing.assert_close(w0[part][k], w1[part][k], rtol=0, atol=0, msg=f"{part}.{k} differs across ranks")
    # the weights moved: the zero-initialised output layer is no longer zero after 3 steps
    assert w0["dit"]["final.linear.weight"].abs().sum() > 0
    assert (tiny_data / "runs" / f"ddp_{precision}" / "checkpoints" / "last.ckpt").is_file()
