"""Training throughput (images/s) at 256x256 crops, and which part limits it.

    python benchmarks/train_throughput.py                          # GPU: the B preset, gpu.yaml; CPU: tiny
    python benchmarks/train_throughput.py --device cpu --preset tiny --batch 4 --steps 3
    python benchmarks/train_throughput.py --device cuda --preset B --workers 12 --json out.json
    python benchmarks/train_throughput.py --device cuda --codec-bf16 --channels-last   # mmaif train's codec switches

Five measurements; the first four each a median over timed steps after warm-up:
  data     the DataModule's training loader (crop, flip, degrade both sources, target, prompt; N workers)
  codec    encoding the batch's three images (a, b, target) in one frozen-codec call
  dit      forward + backward + AdamW step + EMA update of the DiT on latents already on the device
  train    the real loop: loader batch -> device -> FusionModule.compute_loss (codec, text, DiT, loss)
           -> backward -> clip -> AdamW -> EMA, as Lightning's training_step/optimizer_step run it
  trainer  `mmaif train` itself (lit.commands.run_training: Lightning's Trainer, its loader, logging,
           progress bar), warm-up steps then timed steps in one run: what a training run gets
The model sits on the device (codec + DiT run one after the other), so its ceiling is
1 / (1/codec + 1/dit); the loader runs in parallel worker processes. The limit is the loader if it is below
that ceiling, the loop itself if `train` is below 80% of it (a step that waits for the GPU), else the part of
the model that takes longer. Random weights (rates do
not depend on them); on GPU the DiT runs under bf16 autocast (train.precision auto = bf16-mixed).
Without --root, a dataset of 320x320 photographs is written to a temporary folder (the embedded default's
pairs are too small for 256 crops). `--codec-bf16` and `--channels-last` set the codec as `mmaif train`'s
switches of the same names do, for the codec and train measurements. JSON: {"device", "preset", "codec",
"codec_layers_per_block", "batch", "crop", "workers", "codec_bf16", "channels_last", "images_per_s": {"data",
"codec", "dit", "model", "train", "trainer"}, "limit", "codec_fast_paths_images_per_s", "host_syncs_per_step"},
written before the Trainer's run and again after it (a run cut short in it keeps the rest).
"codec_fast_paths_images_per_s" (GPU, learned codec) times the encode in float32 NCHW, channels-last and
channels-last bf16 side by side, whatever the switches. "host_syncs_per_step" (GPU, `--syncs N`, default 3):
after the timed steps, N more steps of `train` and of `trainer` under torch's sync debug mode, and per step the
synchronizing CUDA calls each source line made ("file:line": count). A step that waits for the GPU once cannot
queue the next while the GPU works; the text encoder's own reads (models/text.py, on its own stream) wait
only for its kernels.
"phases" {"dit", "train", "trainer"}: after the first two rates, as many steps again one after the other, as a run
takes them (`rate` syncs before and after every step), with the host's milliseconds per phase (medians: loader,
to_device, encode, embed_text, latent_loss, backward, clip, adamw, ema), the host's whole time per step, what the
device still had to do when the host was done (drain_ms) and the images/s of those steps; for `mmaif train`, its
timed steps by Lightning's hooks (between_steps: the next batch and its transfer; training_step; backward;
optimizer_and_hooks: clip, AdamW, EMA, the end-of-batch hooks). The DiT step's phases run while the loader's
workers idle (their queues are full), the loop's while they work: a phase that is longer in the loop than alone
waits for the device or for a core.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.lit.commands import COMPILE_MODES  # noqa: E402


def rate(fn, n_images: int, steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return n_images / statistics.median(times)


def name_limit(data: float, codec: float, dit: float, train: float, workers: int) -> str:
    """What limits the loop, from the rates (images/s): the loader if it is below the model's ceiling
    1 / (1/codec + 1/dit); else the loop itself if it is well below that ceiling (its parts are fast enough, their
    sequence is not: a step that waits for the GPU, or a host slower than the GPU); else the slower part."""
    model = 1 / (1 / codec + 1 / dit)
    if data < model:
        return f"data loader ({workers} workers: {data:.0f} img/s < model {model:.0f} img/s; add workers)"
    if train < 0.8 * model:
        return (f"the loop, not a part: {train:.0f} img/s against the parts' ceiling of {model:.0f} "
                f"(a step that waits for the GPU, see the host syncs, or a host slower than the GPU)")
    part = "codec encoding" if codec < dit else "DiT step"
    return f"{part} ({max(1 / codec, 1 / dit) * model:.0%} of the model's time on the device)"


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's text for sync debug mode "warn"


@contextmanager
def sync_sites(calls: int, enabled: bool = True):
    """Within the block, torch's sync debug mode (`enabled=False`: the caller switches it itself, as trainer_rate's
    callback does after the timed steps); yields a dict that then holds, per source line ("file:line"), its
    synchronizing CUDA calls divided by `calls`. Other warnings are shown after the block, once each."""
    sites: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if enabled:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            if enabled:
                torch.cuda.set_sync_debug_mode("default")
    counts = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))
    sites.update({site: n / calls for site, n in counts.most_common()})
    for w in {(str(w.message), w.category, w.filename, w.lineno): w for w in caught
              if SYNC_WARNING not in str(w.message)}.values():  # the others, shown once each as they would be
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def sync_report(what: str, sites: dict[str, float]) -> str:
    total = sum(sites.values())
    return f"host syncs per step ({what}): {total:g}" + ("" if not sites else " at " + ", ".join(
        f"{site} ({n:g})" for site, n in sites.items()))


def timed(store: dict | None, name: str, fn):
    """`fn`, appending the host seconds of each call to store[name]; `fn` itself where there is no store."""
    if store is None:
        return fn

    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store.setdefault(name, []).append(time.perf_counter() - start)
    return call


TIMED_METHODS = ("encode", "embed_text", "latent_loss")  # FusionModule's parts of compute_loss


def host_phases(step, module, steps: int, batch: int, sync) -> dict:
    """`steps` calls of step(store) one after the other, as a run takes them (no sync between them, unlike `rate`),
    with the host time of each phase: the module's codec, text and DiT calls (TIMED_METHODS, timed through
    instance attributes over the methods, removed after) and what `step` times into `store` itself. A phase that
    waits for the device (a read of a device value, a blocking copy) or for a core shows as a long one; what the
    device has left to do when the host is done is `drain_ms`."""
    store: dict[str, list[float]] = {}
    for name in TIMED_METHODS:
        setattr(module, name, timed(store, name, getattr(module, name)))
    try:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step(store)
        launched = time.perf_counter()
        sync()
        end = time.perf_counter()
    finally:
        for name in TIMED_METHODS:
            delattr(module, name)
    return phase_summary(store, steps, batch, launched - start, end - launched)


def phase_summary(store: dict[str, list[float]], steps: int, batch: int, host_s: float, drain_s: float) -> dict:
    """The JSON's record of `steps` timed steps: each phase's median host ms (in the order the phases first ended),
    the host's ms per step, the device's drain after the last and the images/s of the whole."""
    return {"steps": steps, "host_ms_per_step": {k: round(statistics.median(v) * 1e3, 2) for k, v in store.items()},
            "host_ms": round(host_s / steps * 1e3, 2), "drain_ms": round(drain_s * 1e3, 2),
            "images_per_s": round(steps * batch / (host_s + drain_s), 2)}


def phase_report(what: str, phases: dict) -> str:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in phases["host_ms_per_step"].items())
    return (f"{what}, host ms per step ({phases['steps']} steps in a row, no sync between them; medians): {parts}; "
            f"all {phases['host_ms']:.1f} per step, then {phases['drain_ms']:.1f} ms for the device to finish: "
            f"{phases['images_per_s']:.1f} images/s")


def trainer_rate(cfg, codec, out_dir: Path, steps: int, warmup: int, sync, syncs: int = 0,
                 **speed) -> tuple[float, dict[str, float], dict]:
    """Images/s of `mmaif train` (run_training) on `cfg` with `codec`, over the steps after `warmup`; the
    synchronizing CUDA calls per step of `syncs` steps after those (sync_sites); and the host's phases of the timed
    steps (as `host_phases` reports them, by Lightning's hooks). Only validation and its callbacks (checkpoints,
    image grids, metrics JSON) are left out."""
    import lightning as L

    from mmaif_pl.lit.commands import run_training

    class StepClock(L.Callback):
        """The timed steps' wall time, and the host's time per phase of each between Lightning's hooks: the loop's
        fetch and transfer of the next batch, training_step (codec, text, DiT, loss), backward, and the rest (clip,
        AdamW, EMA, the end-of-batch hooks)."""

        def __init__(self):
            self.store, self.last_end, self.timing = {}, None, False

        def mark(self, phase):
            now = time.perf_counter()
            if self.timing:
                self.store.setdefault(phase, []).append(now - self.t)
            self.t = now

        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == warmup:
                sync()
                self.start = time.perf_counter()
            self.timing = warmup <= trainer.global_step < warmup + steps
            if self.timing and self.last_end is not None:
                self.store.setdefault("between_steps", []).append(time.perf_counter() - self.last_end)
            self.t = time.perf_counter()
            if syncs and trainer.global_step == warmup + steps:
                torch.cuda.set_sync_debug_mode("warn")

        def on_before_backward(self, *args):
            self.mark("training_step")

        def on_after_backward(self, *args):
            self.mark("backward")

        def on_train_batch_end(self, trainer, *args):
            self.mark("optimizer_and_hooks")
            self.last_end = self.t
            if trainer.global_step == warmup + steps:
                sync()
                end = time.perf_counter()
                self.seconds, self.drain = end - self.start, end - self.last_end

        def on_train_end(self, trainer, *args):
            if syncs:
                torch.cuda.set_sync_debug_mode("default")

    codec.save(out_dir / "codec")
    cfg = cfg.copy()
    cfg.codec.path, cfg.train.out_dir = str(out_dir / "codec"), str(out_dir)
    cfg.train.max_steps = warmup + steps + syncs
    cfg.train.val_every = cfg.train.max_steps + 1  # no validation
    clock = StepClock()
    no_validation = {"limit_val_batches": 0, "num_sanity_val_steps": 0}  # nor a prepared split to read it from
    with sync_sites(syncs, enabled=False) if syncs else nullcontext({}) as sites:  # the clock turns the mode on
        run_training(cfg, trainer_kwargs={"callbacks": [clock], "enable_checkpointing": False,
                                          "enable_model_summary": False, **no_validation},
                     log=lambda *a: None, **speed)
    phases = phase_summary(clock.store, steps, int(cfg.data.batch_size), clock.seconds - clock.drain, clock.drain)
    return steps * int(cfg.data.batch_size) / clock.seconds, sites, phases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--preset", help="model preset (default: B on GPU, tiny on CPU)")
    p.add_argument("-c", "--config", action="append", help="YAML configs (default: base + scale/gpu or scale/cpu)")
    p.add_argument("--batch", type=int, help="batch size (default: the config's data.batch_size)")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--workers", type=int, help="loader workers (default: the config's data.num_workers)")
    p.add_argument("--steps", type=int, help="timed steps per part (default: 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per part (default: 5 GPU, 1 CPU)")
    p.add_argument("--root", help="dataset root with pairs of at least --crop pixels (default: a temporary one)")
    p.add_argument("--variant", default="regression", choices=["regression", "flow"])
    p.add_argument("--compile", metavar="MODE", choices=COMPILE_MODES,
                   help="torch.compile the DiT being trained, regionally (mmaif_pl.fuse.compile_blocks), as mmaif train "
                        "--compile MODE does (reduce-overhead: each block's graphs replayed as CUDA graphs)")
    p.add_argument("--codec-bf16", action="store_true",
                   help="the codec under bf16 autocast (GPU; mmaif train --codec-bf16)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last codec convolutions (mmaif train --channels-last)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing the DiT step, the N operations of it that take the most device time")
    p.add_argument("--syncs", type=int, default=3, metavar="N",
                   help="GPU: N more steps of train and of trainer under torch's sync debug mode, counting the "
                        "synchronizing CUDA calls per step by source line (0: off)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 gives stable figures on a busy machine)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_intermixed_args(argv)

    from data_throughput import make_dataset
    from latency import codec_label, cpu_name, profile_table, random_basis, randomize, write_json

    from mmaif_pl.data.datamodule import FusionDataModule
    from mmaif_pl.fuse import compile_blocks, resolve_device
    from mmaif_pl.lit.callbacks import update_ema
    from mmaif_pl.lit.fusion import FusionModule, build_module
    from mmaif_pl.models.codec import LatentCodec
    from mmaif_pl.models.text import TextEncoder

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.codec_bf16 and not gpu:
        p.error("--codec-bf16 runs the codec under bf16 autocast on a GPU; the device is the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    files = args.config or [str(REPO / "experiments/base.yaml"), str(REPO / f"experiments/scale/{'gpu' if gpu else 'cpu'}.yaml")]
    steps = args.steps or (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.root) if args.root else Path(tmp.name) / "data"
    if not args.root:
        make_dataset(root, size=max(320, args.crop + 64))
    over = [f"data.root={root}", f"data.crop={args.crop}", "data.buckets=[[1,1]]", f"train.variant={args.variant}",
            f"model.preset={args.preset or ('B' if gpu else 'tiny')}", f"data.samples_per_epoch=100000"]
    if args.batch:
        over.append(f"data.batch_size={args.batch}")
    if args.workers is not None:
        over.append(f"data.num_workers={args.workers}")
    cfg = config.load(files, over + list(args.overrides))
    bs, workers = int(cfg.data.batch_size), int(cfg.data.num_workers)
    name = torch.cuda.get_device_name(device) if gpu else cpu_name()
    bf16 = gpu and torch.cuda.is_bf16_supported()
    print(f"device: {name}; preset {cfg.model.preset}, codec {codec_label(cfg.codec)}, "
          f"batch {bs} x {args.crop}px, {workers} loader workers, bf16 {bf16}; random weights")

    torch.manual_seed(0)
    codec = LatentCodec.from_config(cfg.codec) if cfg.codec.kind != "pretrained" else LatentCodec.load(cfg.codec.path)
    random_basis(codec)
    module = build_module(cfg, codec, TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize))
    randomize(module.dit)
    module = module.to(device).train()
    module._frozen_to_device()
    if args.compile:
        compile_blocks(module.dit, mode=args.compile)
    opt = module.configure_optimizers()["optimizer"]  # FusionModule's choice: the fused AdamW on CUDA
    adamw_fused = bool(opt.defaults.get("fused"))
    print(f"  AdamW: {'fused' if adamw_fused else 'torch default'}", flush=True)
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    # -- data ------------------------------------------------------------------------------------------
    dm = FusionDataModule(cfg, train_keys=FusionModule.training_image_keys(cfg))  # what `mmaif train` ships
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    # drain what the workers prefetched at start-up (prefetch_factor 2 each), then time steady production
    batches = [next(loader) for _ in range(2 * max(workers, 1) + warmup)]
    n = max(steps, 2 * max(workers, 1))
    t0 = time.perf_counter()
    for _ in range(n):
        next(loader)
    data_rate = n * bs / (time.perf_counter() - t0)
    print(f"  data {data_rate:.1f} images/s", flush=True)  # each part as it is measured: a run cut short keeps them

    def to_dev(batch):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    batch = to_dev(batches[0])
    # the prefetched batches' prompts encoded once; the loops below meet new ones, as a run does for a long time
    module.embed_text([p for b in batches for p in b["prompt"]])

    # -- codec -----------------------------------------------------------------------------------------
    images = torch.cat([batch["a"], batch["b"], batch["target"]])
    ae = getattr(module.codec, "ae", None)

    def set_codec(channels_last: bool, bf16: bool):
        if ae is not None:
            ae.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        module.codec_bf16 = bf16

    codec_options = {}  # GPU, learned codec: the three encodes side by side
    if gpu and ae is not None:
        for key, setting in (("float32", (False, False)), ("channels_last", (True, False)),
                             ("channels_last_bf16", (True, True))):
            set_codec(*setting)
            codec_options[key] = rate(lambda: module.encode(images), bs, steps, warmup, sync)
    set_codec(args.channels_last, args.codec_bf16)  # what the codec and train measurements use
    codec_rate = rate(lambda: module.encode(images), bs, steps, warmup, sync)
    print(f"  codec {codec_rate:.1f} images/s", flush=True)

    # -- DiT step on ready latents ---------------------------------------------------------------------
    with torch.no_grad():
        z_a, z_b, z_gt = module.encode(images).chunk(3)
    cond = module.embed_text(batch["prompt"])
    gen = torch.Generator().manual_seed(0)

    def adamw():
        opt.step()
        opt.zero_grad(set_to_none=True)

    def optimize(loss, store=None):  # what the Lightning loop does after the forward pass: backward, clip, step, EMA
        parts = {"backward": loss.backward, "clip": lambda: torch.nn.utils.clip_grad_norm_(
            module.dit.parameters(), cfg.train.grad_clip), "adamw": adamw,
            "ema": lambda: update_ema(module.ema, module.dit, 0.999)}
        for name, fn in parts.items():
            timed(store, name, fn)()

    def dit_step(store=None):
        with amp:  # the DiT as compute_loss calls it in training (one cast of its matmul weights under bf16)
            latent, balance, _, _ = module.latent_loss(z_a, z_b, z_gt, cond, gen, module.training_denoiser())
            loss = latent + cfg.model.balance_weight * balance
        optimize(loss, store)

    dit_rate = rate(dit_step, bs, steps, warmup, sync)
    print(f"  dit {dit_rate:.1f} images/s", flush=True)
    phases = {"dit": host_phases(dit_step, module, steps, bs, sync)}  # the loader's workers idle: queues full
    print("  " + phase_report("DiT step", phases["dit"]), flush=True)
    if args.profile:
        print(profile_table(dit_step, device, args.profile), flush=True)

    # -- the whole loop ----------------------------------------------------------------------------------
    def train_step(store=None):
        b = timed(store, "to_device", to_dev)(timed(store, "loader", next)(loader))
        with amp:
            loss = module.compute_loss(b, gen)["loss"]
        optimize(loss, store)

    train_rate = rate(train_step, bs, steps, warmup, sync)
    print(f"  train {train_rate:.1f} images/s", flush=True)

    phases["train"] = host_phases(train_step, module, steps, bs, sync)
    print("  " + phase_report("train", phases["train"]), flush=True)
    syncs = {}
    if gpu and args.syncs:
        with sync_sites(args.syncs) as syncs["train"]:
            for _ in range(args.syncs):
                train_step()
        print("  " + sync_report("train", syncs["train"]), flush=True)

    model_rate = 1 / (1 / codec_rate + 1 / dit_rate)
    limit = name_limit(data_rate, codec_rate, dit_rate, train_rate, workers)
    res = {"data": data_rate, "codec": codec_rate, "dit": dit_rate, "model": model_rate, "train": train_rate}
    print("images/s: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
    if codec_options:
        print("codec encoding, images/s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in codec_options.items()))
    print(f"training throughput {train_rate:.1f} images/s at {args.crop}x{args.crop}; limited by {limit}")

    def save():  # after the hand-written parts and again after the Trainer's: a run cut short keeps the first
        if args.json:
            write_json(Path(args.json), {
                "device": name, "preset": cfg.model.preset,
                "codec": codec_label(cfg.codec),
                "codec_layers_per_block": module.codec.layers_per_block,
                "batch": bs, "crop": args.crop, "workers": workers, "bf16": bf16, "variant": args.variant,
                "codec_bf16": args.codec_bf16, "channels_last": args.channels_last, "adamw_fused": adamw_fused,
                "compile": args.compile,
                "images_per_s": {k: round(v, 2) for k, v in res.items()}, "limit": limit,
                "codec_fast_paths_images_per_s": {k: round(v, 2) for k, v in codec_options.items()},
                "host_syncs_per_step": syncs, "phases": phases})

    save()
    del loader, batches, batch, images, z_a, z_b, z_gt  # the Trainer builds its own loader and model
    res["trainer"], trainer_syncs, phases["trainer"] = trainer_rate(
        cfg, module.codec, Path(tmp.name), steps, max(warmup, 1), sync, syncs=args.syncs if gpu else 0,
        compile_mode=args.compile, codec_bf16=args.codec_bf16, channels_last=args.channels_last)
    print(f"mmaif train (Lightning's loop): {res['trainer']:.1f} images/s")
    print(phase_report("mmaif train", phases["trainer"]))
    if gpu and args.syncs:
        syncs["trainer"] = trainer_syncs
        print(sync_report("trainer", trainer_syncs))
    save()
    if args.json:
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
