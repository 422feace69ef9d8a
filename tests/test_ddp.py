"""Multi-process training from config only: two CPU processes over gloo, through `run_training`.

The config says `train.strategy=ddp` (or `fsdp`) `train.accelerator=cpu train.devices=2`; nothing else changes.
Lightning's launcher starts the second rank by re-running the script, so the training runs in a small script of its
own (not inside pytest). DDP: after a few optimizer steps both ranks must hold identical DiT and EMA weights, moved
from their initialisation. FSDP (lit/sharding.py): each rank must hold only its shards, and a run stopped and resumed
must end with DDP's weights, bit for bit, in a checkpoint that a single-device run could have written.
"""
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from pathlib import Path
    from mmaif_pl.config import load
    from mmaif_pl.lit.commands import leave_process_group, run_training
    from mmaif_pl.lit.fusion import FusionModule

    FusionModule.cast_matmul_weights = True  # as on CUDA: under bf16-mixed the multi-tensor casts, else nothing

    root, precision, strategy, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    max_steps, stop, resume = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "resume"
    accelerator, devices, nodes = sys.argv[8], int(sys.argv[9]), int(sys.argv[10])
    if accelerator == "cuda":  # cuDNN's and cuBLAS's deterministic kernels: a rerun gives the same weights
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        torch.use_deterministic_algorithms(True, warn_only=True)
    text = os.environ.get("MMAIF_TEST_TEXT_ENCODER")  # the GPU machine's stand-in MiniLM (benchmarks/gpu_check.sh)
    cfg = load([], [f"data.root={root / 'data'}", f"data.prepared={root / 'prepared'}", "data.crop=32",
                    "data.batch_size=2", "data.num_workers=0", "data.samples_per_epoch=16", "data.eval_crop=32",
                    "codec.kind=linear", "codec.fit_batches=2", "model.hidden=64", "model.depth=2", "model.heads=2",
                    "model.pe_grid=8", f"train.max_steps={max_steps}", "train.warmup_steps=1", "train.val_every=2",
                    "train.val_batches=1", "train.log_every=1", "train.lr=1e-3", "train.ema_decay=0.5",
                    f"train.out_dir={root / 'runs'}", f"train.name={name}", f"train.precision={precision}",
                    f"train.strategy={strategy}", f"train.accelerator={accelerator}", f"train.devices={devices}",
                    f"train.num_nodes={nodes}",
                    *([f"text.encoder={text}"] if text else [])])
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    module, trainer, run_dir = run_training(cfg, trainer_kwargs={**quiet, **({"max_steps": stop} if stop else {})},
                                            resume="last" if resume else None, log=lambda *a: None)
    rank = trainer.global_rank
    # under FSDP a parameter is a DTensor holding this rank's rows: gathered (on every rank) for the comparison
    full = lambda sd: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in sd.items()}
    torch.save({"dit": full(module.dit.state_dict()), "ema": full(module.ema.state_dict())}, root / f"rank{rank}.pt")
    local = lambda p: p.to_local() if hasattr(p, "to_local") else p
    leave_process_group()  # as `mmaif train` ends: all ranks done with each other before any exits
    (root / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": trainer.world_size,
                                                       "step": trainer.global_step,
                                                       "strategy": type(trainer.strategy).__name__,
                                                       "node_rank": trainer.node_rank,
                                                       "local_rank": trainer.local_rank,
                                                       # a single device's strategy has no cluster environment
                                                       "environment": type(getattr(trainer.strategy,
                                                                                   "cluster_environment",
                                                                                   None)).__name__,
                                                       "cast_weights": hasattr(module, "_matmul_casts"),
                                                       "left_group": not torch.distributed.is_initialized(),
                                                       "numel": sum(p.numel() for p in module.dit.parameters()),
                                                       "local_numel": sum(local(p).numel()
                                                                          for p in module.dit.parameters()),
                                                       "val": {k: float(v) for k, v in trainer.callback_metrics.items()
                                                               if k.startswith("val/")}}))
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


def train_ranks(root: Path, precision: str, strategy: str, name: str, max_steps: int, stop: int = 0,
                resume: bool = False, accelerator: str = "cpu", devices: int = 2, nodes: int = 1,
                launcher: str = "torchrun") -> list[dict]:
    """Run the script on `devices` ranks (of each of `nodes` nodes); -> each rank's info (its weights are in
    rank<r>.pt). One node: Lightning starts the other ranks. Several, all on this machine: `launcher` torchrun
    starts each node's ranks with a torchrun of its own, as a job script does on each node; `slurm` starts each
    rank with the environment srun gives a task (one task per device); `by_hand` starts each node's script with
    MASTER_ADDR and NODE_RANK set, and its Lightning starts the node's ranks."""
    for old in root.glob("rank*"):
        old.unlink()
    script = root / "train_ranks.py"
    script.write_text(SCRIPT)
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # keeps gpu_check's packages
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS's deterministic workspace (used on CUDA only)
    args = [str(root), precision, strategy, name, str(max_steps), str(stop), "resume" if resume else "new",
            accelerator, str(devices), str(nodes)]
    if nodes == 1:
        res = subprocess.run([sys.executable, str(script), *args], cwd=root, env=env, capture_output=True, text=True,
                             timeout=280)
        if res.returncode != 0:  # the ranks' output in full: an assertion's repr would cut it short
            pytest.fail(f"ranks exited with {res.returncode}\n--- stdout ---\n{res.stdout[-4000:]}\n"
                        f"--- stderr ---\n{res.stderr[-12000:]}", pytrace=False)
    else:
        with socket.socket() as s:  # a free port for the rendezvous (node 0 hosts it)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if launcher == "torchrun":
            starts = [([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
                        f"--nproc-per-node={devices}", f"--node-rank={n}", "--master-addr=127.0.0.1",
                        f"--master-port={port}"], {}) for n in range(nodes)]
        elif launcher == "by_hand":  # each node's Lightning starts its ranks; MASTER_ADDR and NODE_RANK set by hand
            starts = [([sys.executable], {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(n)})
                      for n in range(nodes)]
        else:
            assert launcher == "slurm", launcher
            starts = [([sys.executable], {
                "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mmaif", "SLURM_NODELIST": "127.0.0.1",
                "SLURM_NNODES": str(nodes), "SLURM_NTASKS": str(nodes * devices),
                "SLURM_NTASKS_PER_NODE": str(devices), "SLURM_PROCID": str(r), "SLURM_NODEID": str(r // devices),
                "SLURM_LOCALID": str(r % devices), "MASTER_PORT": str(port)}) for r in range(nodes * devices)]
        logs = [root / f"{launcher}{i}.log" for i in range(len(starts))]
        with contextlib.ExitStack() as files:
            procs = [subprocess.Popen([*cmd, str(script), *args], cwd=root, env={**env, **extra},
                                      stdout=files.enter_context(log.open("w")), stderr=subprocess.STDOUT)
                     for (cmd, extra), log in zip(starts, logs)]
            try:
                codes = [p.wait(timeout=280) for p in procs]
            finally:
                for p in procs:
                    p.kill()  # any still running (one that waits for a failed one): nothing is left behind
        if codes != [0] * len(procs):
            pytest.fail(f"exit codes {codes}\n" + "\n".join(f"--- {log.name} ---\n{log.read_text()[-8000:]}"
                                                           for log in logs), pytrace=False)
    ranks = devices * nodes
    infos = [json.loads((root / f"rank{r}.json").read_text()) for r in range(ranks)]
    assert [i["rank"] for i in infos] == list(range(ranks))
    assert all(i["world_size"] == ranks for i in infos), infos
    assert all(i["left_group"] for i in infos), infos  # ended as `mmaif train` ends
    return infos


def rank_weights(root: Path, ranks: int = 2) -> list[dict]:
    return [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(ranks)]


def validate_on_one_device(ckpt: Path, precision: str, val_batches: int) -> dict:
    """The `val/*` metrics that a single-device validation of a checkpoint logs (its config names its data)."""
    import lightning as L

    from mmaif_pl.data.datamodule import FusionDataModule
    from mmaif_pl.lit.fusion import load_module

    module = load_module(ckpt)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, limit_val_batches=val_batches, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran (OMP_NUM_THREADS=1)
    try:
        trainer.validate(module, datamodule=FusionDataModule(module.cfg), verbose=False)
    finally:
        torch.set_num_threads(threads)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def assert_same(x: dict, y: dict, what: str) -> None:
    assert x.keys() == y.keys(), what
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, msg=f"{what}: {k} differs")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ddp_two_cpu_ranks_hold_identical_weights(tiny_data, precision):
    """32-true, as the CPU pipeline trains; bf16-mixed, as a GPU run trains, where the gradients reach DDP through
    the per-block multi-tensor casts of the matmul weights (lit/matmul_weights.py)."""
    infos = train_ranks(tiny_data, precision, "ddp", f"ddp_{precision}", max_steps=3)
    assert all(i["step"] == 3 for i in infos), infos
    assert all(i["strategy"] == "DDPStrategy" for i in infos), infos
    assert all(i["cast_weights"] == (precision == "bf16-mixed") for i in infos), infos

    w0, w1 = rank_weights(tiny_data)
    for part in ("dit", "ema"):
        assert_same(w0[part], w1[part], f"{part} across ranks")
    # the weights moved: the zero-initialised output layer is no longer zero after 3 steps
    assert w0["dit"]["final.linear.weight"].abs().sum() > 0
    assert (tiny_data / "runs" / f"ddp_{precision}" / "checkpoints" / "last.ckpt").is_file()

    # Validation (at step 2) covers the same samples on every rank as on one device: both ranks report, and
    # metrics.json records, what a single-device validation of the step-2 weights reports. With the split
    # sharded instead, each rank would score its own shard (3 samples: 2 and 1 + a repeated one).
    run = tiny_data / "runs" / f"ddp_{precision}"
    single = validate_on_one_device(run / "checkpoints" / "step0000002.ckpt", precision, val_batches=1)
    assert {"val/psnr", "val/loss", "val/PSNR", "val/SSIM"} <= single.keys(), single
    for info in infos:
        assert info["val"] == pytest.approx(single, rel=1e-6, abs=1e-6, nan_ok=True), (info["rank"], info["val"],
                                                                                        single)
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["step"] == 2
    finite = {k: v for k, v in single.items() if math.isfinite(v)}  # metrics.json leaves out NaNs (a tiny crop's VIF)
    assert {f"val/{k}": v for k, v in recorded.items() if k != "step"} == pytest.approx(finite, rel=1e-6, abs=1e-6)


@pytest.fixture(scope="module")
def one_node_two_devices(tiny_data) -> dict:
    """The weights after 3 steps on one node with two devices (DDP, 32-true): what two nodes must reach."""
    one = train_ranks(tiny_data, "32-true", "ddp", "one_node", max_steps=3)
    assert [(i["node_rank"], i["local_rank"]) for i in one] == [(0, 0), (0, 1)], one
    return rank_weights(tiny_data)[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher, environment", [("torchrun", "TorchElasticEnvironment"),
                                                   ("slurm", "SLURMEnvironment"),
                                                   ("by_hand", "LightningEnvironment")])
def test_two_nodes_train_as_one_node_with_two_devices(tiny_data, one_node_two_devices, launcher, environment):
    """Multi-node from the config only: `train.num_nodes=2 train.devices=1` on two "nodes" of this machine (gloo),
    started by a torchrun per node (node ranks 0 and 1, the rendezvous on node 0), as srun starts the tasks of a
    SLURM job (its environment, one task per node), or by hand (MASTER_ADDR and NODE_RANK on each node); Lightning
    reads the ranks from it. Both ranks fit the run's
    linear codec at the same moment and save it into the shared run folder; the first one saved is the codec
    every rank trains with and the checkpoint names. The two nodes end with the weights that one node with two
    devices reaches, bit for bit: the same batches, the same all-reduce."""
    from mmaif_pl.lit.fusion import read_checkpoint
    from mmaif_pl.models.codec import LatentCodec

    name = f"two_nodes_{launcher}"
    nodes = train_ranks(tiny_data, "32-true", "ddp", name, max_steps=3, devices=1, nodes=2, launcher=launcher)
    assert [(i["node_rank"], i["local_rank"]) for i in nodes] == [(0, 0), (1, 0)], nodes
    assert all(i["environment"] == environment and i["step"] == 3 for i in nodes), nodes
    on_nodes = rank_weights(tiny_data)
    for part in ("dit", "ema"):
        assert_same(on_nodes[0][part], on_nodes[1][part], f"{part} across nodes")
        assert_same(on_nodes[0][part], one_node_two_devices[part], f"{part}: two nodes against one with two devices")
    assert on_nodes[0]["dit"]["final.linear.weight"].abs().sum() > 0  # the weights moved

    run = tiny_data / "runs" / name
    recorded = read_checkpoint(run / "checkpoints" / "last.ckpt")["mmaif"]["codec"]
    assert recorded == LatentCodec.load(run / "codec").identity()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_several_nodes_without_a_launcher_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    """`train.num_nodes=2` started as a plain `mmaif train` (no torchrun, no srun, no NODE_RANK): Lightning would take
    this machine for node 0 and wait in `fit` for a node that never joins (30 minutes, then a timeout; seen on this
    CPU: "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" and nothing more). It is a one-line error naming
    the key and the launchers, before the run folder exists."""
    from mmaif_pl.config import load
    from mmaif_pl.errors import ConfigError
    from mmaif_pl.lit.commands import run_training

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_"))] + [
            "NODE_RANK", "MASTER_ADDR", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "KUBERNETES_PORT"]:
        monkeypatch.delenv(key, raising=False)
    cfg = load([], [f"data.root={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'runs'}", "train.name=nodes",
                    "train.accelerator=cpu",
                    "train.devices=1", "train.num_nodes=2", "train.strategy=ddp"])
    with pytest.raises(ConfigError, match=r"train.num_nodes=2, but nothing launched this run on several nodes: "
                                          r"start it on every node with torchrun"):
        run_training(cfg, log=lambda *a: None)
    assert not (tmp_path / "runs").exists()


def test_strategy_names():
    """`fsdp` is the FSDP2 strategy; Lightning's flat-parameter sharding is refused with the key named."""
    from mmaif_pl.errors import ConfigError
    from mmaif_pl.lit.sharding import ShardedDataParallel, resolve_strategy

    assert isinstance(resolve_strategy("fsdp"), ShardedDataParallel)
    assert resolve_strategy("ddp") == "ddp" and resolve_strategy("auto") == "auto"
    for name in ("fsdp_cpu_offload", "deepspeed_stage_3"):
        with pytest.raises(ConfigError, match=f"train.strategy={name} shards the model with flat parameters"):
            resolve_strategy(name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_two_cpu_ranks_shard_resume_and_match_ddp(tiny_data):
    """`train.strategy=fsdp`: FSDP2 through Lightning's ModelParallelStrategy (lit/sharding.py). Each rank holds
    about half of the DiT; a run stopped at step 2 and resumed to 4 ends with the weights and EMA that DDP reaches
    in 4 uninterrupted steps, bit for bit (the same gradients, averaged by a reduce-scatter instead of an
    all-reduce, and the EMA updated shard by shard); its checkpoint has DDP's keys, whole tensors and optimizer
    state, so `mmaif fuse` and a single-device resume read it as they read any other."""
    from mmaif_pl.lit.fusion import read_checkpoint

    ddp_infos = train_ranks(tiny_data, "32-true", "ddp", "ref_ddp", max_steps=4)
    ddp = rank_weights(tiny_data)[0]

    first = train_ranks(tiny_data, "32-true", "fsdp", "fsdp", max_steps=4, stop=2)
    assert all(i["strategy"] == "ShardedDataParallel" and i["step"] == 2 for i in first), first
    assert not any(i["cast_weights"] for i in first)
    numel = first[0]["numel"]
    assert sum(i["local_numel"] for i in first) == numel, first  # every row on exactly one rank
    assert all(i["local_numel"] < 0.6 * numel for i in first), first

    resumed = train_ranks(tiny_data, "32-true", "fsdp", "fsdp", max_steps=4, resume=True)
    assert all(i["step"] == 4 for i in resumed), resumed
    fsdp = rank_weights(tiny_data)
    for part in ("dit", "ema"):
        assert_same(fsdp[0][part], ddp[part], f"{part}: FSDP (stopped, resumed) against DDP")
        assert_same(fsdp[1][part], ddp[part], f"{part}: FSDP rank 1 against DDP")
    # the step-4 validation, of the same weights on the same (whole) split: DDP's values on every rank
    assert "val/psnr" in ddp_infos[0]["val"], ddp_infos
    for info in resumed + ddp_infos[1:]:
        assert info["val"] == pytest.approx(ddp_infos[0]["val"], rel=0, abs=0, nan_ok=True), info

    runs = tiny_data / "runs"
    ckpt_fsdp = torch.load(runs / "fsdp" / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt_ddp = torch.load(runs / "ref_ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt_fsdp["global_step"] == 4 and read_checkpoint(runs / "fsdp" / "checkpoints" / "last.ckpt")["mmaif"]
    assert all(type(v) is torch.Tensor for v in ckpt_fsdp["state_dict"].values())  # whole tensors, not shards
    assert_same(ckpt_fsdp["state_dict"], ckpt_ddp["state_dict"], "checkpoint state_dict")
    # the optimizer state, group by group in parameter order (how torch's load_state_dict pairs it with parameters)
    opt_f, opt_d = ckpt_fsdp["optimizer_states"][0], ckpt_ddp["optimizer_states"][0]
    for group_f, group_d in zip(opt_f["param_groups"], opt_d["param_groups"], strict=True):
        assert len(group_f["params"]) == len(group_d["params"])
        for i_f, i_d in zip(group_f["params"], group_d["params"]):
            assert_same(opt_f["state"][i_f], opt_d["state"][i_d], "AdamW state")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(300)
def test_fsdp_on_one_gpu_trains_like_the_default_strategy(tiny_data):
    """FSDP2 on CUDA (NCCL, bf16-mixed, the fused AdamW on sharded parameters), one GPU, 3 steps, against the same
    run under the default strategy (the per-block bf16 casts of the matmul weights, the fused AdamW): the same
    updates up to float rounding. On the CPU the two are bit for bit equal. On an H200 `embed.weight` differed by
    more than 1e-4 (2026-11-27): AdamW turns any rounding difference in a near-zero gradient into an update of
    up to lr (1e-3 here). So the bound is the default strategy's own rerun spread (deterministic kernels asked
    for), or float rounding where that is zero. benchmarks/gpu_check.sh runs it (its `fsdp` step)."""
    runs = {}
    for name, strategy in [("gpu_default", "auto"), ("gpu_default_again", "auto"), ("gpu_fsdp", "fsdp")]:
        infos = train_ranks(tiny_data, "bf16-mixed", strategy, name, max_steps=3, accelerator="cuda", devices=1)
        assert infos[0]["step"] == 3
        runs[name] = rank_weights(tiny_data, 1)[0]
    assert infos[0]["strategy"] == "ShardedDataParallel"
    default, again, fsdp = runs["gpu_default"], runs["gpu_default_again"], runs["gpu_fsdp"]
    assert default["dit"]["final.linear.weight"].abs().sum() > 0  # the weights moved
    worst = []
    for part in ("dit", "ema"):
        assert fsdp[part].keys() == default[part].keys()
        for k in default[part]:
            ref, rerun, sharded = (run[part][k].double() for run in (default, again, fsdp))  # any dtype
            spread = (rerun - ref).abs().max().item()
            diff = (sharded - ref).abs()
            bound = 2 * spread + 1e-4 + 1e-3 * ref.abs()
            if (diff > bound).any():
                worst.append((diff.max().item(), spread, int((diff > bound).sum()), diff.numel(), f"{part}.{k}"))
    assert not worst, "FSDP against the default (max diff, rerun spread, elements over, of, tensor): " \
        + "; ".join(f"{d:.2e}, {s:.2e}, {n}/{m}, {k}" for d, s, n, m, k in sorted(worst, reverse=True)[:8])
