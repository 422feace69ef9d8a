"""`mmaif train-codec` and `mmaif train`."""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

from ..config import ConfigError, atomic_write_text, config_hash, load, save_resolved
from ..errors import UserError

TRAIN_CODEC_EXAMPLE = """example:
  mmaif train-codec -c experiments/codec.yaml codec.path=runs/codec
  mmaif train-codec -c experiments/codec_gpu.yaml codec.steps=20000"""

TRAIN_EXAMPLE = """example:
  mmaif train -c experiments/base.yaml train.variant=flow train.name=flow train.max_steps=200
  mmaif train -c experiments/base.yaml --resume            # continue runs/<name>/checkpoints/last.ckpt
  mmaif train -c experiments/base.yaml -c experiments/scale/gpu.yaml --compile default   # GPU: compiled blocks
  mmaif train -c experiments/base.yaml -c experiments/scale/gpu.yaml --codec-bf16 --channels-last  # GPU codec"""


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # inductor's


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train-codec", help="fit / train the latent codec and measure its latent statistics",
                              description="Fit the linear codec or train a learned one on the training images, "
                                          "store it with its latent statistics in a folder, and write its "
                                          "reconstruction PSNR on the validation split.",
                              epilog=TRAIN_CODEC_EXAMPLE, formatter_class=fmt)
    p.add_argument("-c", "--config", action="append", default=[], help="YAML config (repeatable, merged in order)")
    p.add_argument("--out", help="codec folder (default: codec.path, else <train.out_dir>/codec)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=cmd_train_codec)

    p = subparsers.add_parser("train", help="train a fusion model (regression or flow)",
                              description="Train FusionDiT on the DataModule's batches with Lightning; "
                                          "TensorBoard logs, checkpoints and metrics go to <train.out_dir>/<train.name>.",
                              epilog=TRAIN_EXAMPLE, formatter_class=fmt)
    p.add_argument("-c", "--config", action="append", default=[], help="YAML config (repeatable, merged in order)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="resume from CKPT (default: the run's last.ckpt); refused if its config differs. Without "
                        "it, a folder that already holds checkpoints is refused (one run per folder)")
    p.add_argument("--compile", metavar="MODE", choices=COMPILE_MODES,
                   help=f"torch.compile each DiT block being trained ({' | '.join(COMPILE_MODES)}): a speed switch, "
                        "not part of the config; checkpoints keep the plain model's keys and load without it")
    p.add_argument("--codec-bf16", action="store_true",
                   help="run the frozen codec under bf16 autocast (GPU only): a speed switch, not part of the config; "
                        "its latents differ from float32 ones by 0.4%% (docs/speed.md)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory for a learned codec's convolutions: a speed switch, not part of the "
                        "config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=cmd_train)


def _datamodule(cfg, **kwargs):
    try:
        from ..data.datamodule import FusionDataModule
    except ImportError as exc:
        raise UserError(f"the data pipeline is not available: {exc}") from None
    return FusionDataModule(cfg, **kwargs)


def _precision(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def _device(accelerator: str):
    """The device Lightning picks for `train.accelerator` on one device: the GPU for auto / gpu / cuda when
    there is one, else the CPU."""
    import torch

    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def _codec_loaders(cfg):
    """Fresh train / val iterables of fusion batches, at the codec stage's batch size and crop."""
    ccfg = copy.deepcopy(cfg)
    ccfg.data.batch_size, ccfg.data.crop = cfg.codec.batch_size, cfg.codec.crop
    dm = _datamodule(ccfg)
    dm.setup("fit")
    return dm.train_dataloader, dm.val_dataloader


def cmd_train_codec(args) -> int:
    from ..models.codec import LatentCodec
    from .codec import evaluate_codec, fit_codec

    import lightning as L

    cfg = load(args.config, args.overrides)
    out = Path(args.out or cfg.codec.path or Path(cfg.train.out_dir) / "codec")
    train_loader, val_loader = _codec_loaders(cfg)
    # torch seeds itself at random: a learned codec's initial weights (and its training) follow train.seed, as
    # the fusion training does; the linear codec is a closed-form fit and does not depend on it
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    codec = LatentCodec.from_config(cfg.codec)
    # the fusion training's precision rule (train.precision; "auto": bf16-mixed on a GPU that has it)
    trainer_kwargs = {"accelerator": cfg.train.accelerator, "precision": _precision(cfg.train.precision)}
    device = _device(cfg.train.accelerator)  # statistics and PSNR on the training device, not Lightning's CPU
    info = fit_codec(codec, cfg.codec, train_loader, trainer_kwargs, device=device)
    codec.save(out)
    metrics = {"psnr": round(evaluate_codec(codec, val_loader(), device=device), 3),
               "psnr_train": round(evaluate_codec(codec, train_loader(), 8, device=device), 3), **info,
               **codec.describe()}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"codec {codec.kind} f{codec.factor}x{codec.channels}: val PSNR {metrics['psnr']:.2f} dB "
          f"(train {metrics['psnr_train']:.2f}) in {info['seconds']:.0f}s -> {out} (metrics.json)")
    return 0


def _check_resume(ckpt_path: Path, digest: str) -> None:
    from .fusion import read_checkpoint

    meta = read_checkpoint(ckpt_path)["mmaif"]
    if meta.get("config_hash") != digest:
        raise ConfigError(f"{ckpt_path} was made under config hash {meta.get('config_hash')}, this run's is {digest}; "
                          f"refusing to resume (change train.name for a new run, or restore the old config)")


def _check_new_run(run_dir: Path) -> None:
    """A new run (no --resume) is refused in a folder that holds a run's checkpoints: Lightning would save beside
    them as last-v1.ckpt, and last.ckpt, which --resume, `mmaif fuse` and the run's summary line name, would stay
    the old run's, under the new run's config and metrics."""
    old = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if old:
        raise UserError(f"{run_dir} already holds a run ({', '.join(old)}): continue it with --resume, start a new "
                        f"one under another train.name (or train.out_dir), or delete {run_dir} first")


def prepare_codec(cfg, run_dir: Path, train_loader=None):
    """The run's codec: loaded from codec.path, or (linear kind only) fitted now into <run>/codec."""
    from ..models.codec import LatentCodec
    from .codec import fit_codec

    if cfg.codec.path:
        codec = LatentCodec.load(cfg.codec.path)
        if (codec.factor, codec.channels) != (cfg.codec.factor, cfg.codec.channels) and cfg.codec.kind != "pretrained":
            raise ConfigError(f"codec folder {cfg.codec.path} is f{codec.factor}x{codec.channels}, the config says "
                              f"codec.factor={cfg.codec.factor} codec.channels={cfg.codec.channels}")
        return codec
    if cfg.codec.kind != "linear":
        raise ConfigError(f"codec.kind={cfg.codec.kind} needs codec.path: run `mmaif train-codec` first")
    folder = run_dir / "codec"
    if not (folder / "codec.json").is_file():
        if train_loader is None:
            train_loader = _codec_loaders(cfg)[0]
        codec = LatentCodec.from_config(cfg.codec)
        fit_codec(codec, cfg.codec, train_loader)
        # The ranks of a run launched together (torchrun, SLURM) each fit it; the first saved is kept, and every
        # rank trains with that one, the codec that the checkpoints name.
        codec.save(folder, replace=False)
    cfg.codec.path = str(folder)
    return LatentCodec.load(folder)


def _trainer(cfg, run_dir: Path, strategy, trainer_kwargs=None):
    """The fusion run's Lightning Trainer (its refusals of the train.* settings are ConfigErrors); writes nothing."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from .callbacks import ImageGridLogger, MetricsJSON
    from .trainer import checked_trainer

    tc = cfg.train
    logger = TensorBoardLogger(save_dir=tc.out_dir, name=tc.name, version="", default_hp_metric=False)
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                              every_n_train_steps=tc.val_every, save_last=True, save_top_k=1)
    max_steps = max(1, round(tc.max_steps * tc.steps_factor))
    kwargs = dict(max_steps=max_steps, precision=_precision(tc.precision), accelerator=tc.accelerator,
                  devices=tc.devices, strategy=strategy, num_nodes=tc.num_nodes, gradient_clip_val=tc.grad_clip,
                  val_check_interval=tc.val_every, check_val_every_n_epoch=None, limit_val_batches=tc.val_batches,
                  log_every_n_steps=tc.log_every, logger=logger,
                  callbacks=[ckpt_cb, ImageGridLogger(), MetricsJSON(run_dir / "metrics.json")])
    if tc.max_time_minutes:
        kwargs["max_time"] = {"minutes": tc.max_time_minutes}
    kwargs.update(trainer_kwargs or {})
    return checked_trainer(f"train.accelerator={tc.accelerator}, train.devices={tc.devices}, train.strategy="
                           f"{tc.strategy}, train.num_nodes={tc.num_nodes}, train.precision={tc.precision}", **kwargs)


def run_training(cfg, resume: str | None = None, datamodule=None, trainer_kwargs=None, log=print,
                 compile_mode: str | None = None, compile_backend="inductor", codec_bf16: bool = False,
                 channels_last: bool = False):
    """Train per `cfg`; returns (module, trainer, run_dir). `datamodule` and `trainer_kwargs` are for tests.

    Speed switches, outside the config and its hash (a run may be resumed with or without them; the summary
    records them): `compile_mode` compiles the DiT's blocks and final layer in place (`fuse.compile_blocks`;
    the parameters and state_dict keys stay those of the plain model, so checkpoints, resuming and the EMA are
    unchanged); `codec_bf16` runs the frozen codec under bf16 autocast (CUDA only) and `channels_last` stores
    a learned codec's convolutions channels-last, the codec fast paths of inference.
    """
    import lightning as L
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from ..models.text import TextEncoder
    from .fusion import FusionModule, build_module
    from .sharding import resolve_strategy

    tc = cfg.train
    strategy = resolve_strategy(tc.strategy)  # bad values fail here, before anything is written
    if tc.steps_factor <= 0:
        raise ConfigError(f"train.steps_factor must be > 0, got {tc.steps_factor}")
    if codec_bf16 and _device(tc.accelerator).type != "cuda":
        raise UserError(f"--codec-bf16 runs the codec under bf16 autocast on a GPU; this run trains on the CPU "
                        f"(train.accelerator={tc.accelerator})")
    run_dir = Path(tc.out_dir) / tc.name
    if not resume:
        _check_new_run(run_dir)
    trainer = _trainer(cfg, run_dir, strategy, trainer_kwargs)  # Lightning checks its settings: before any write
    dm = datamodule if datamodule is not None else _datamodule(cfg, train_keys=FusionModule.training_image_keys(cfg))
    if trainer.limit_val_batches and hasattr(dm, "check_validation_split"):
        dm.check_validation_split()  # now, not once the codec and the model are built
    train_loader = None
    if datamodule is not None:
        datamodule.setup("fit")
        train_loader = datamodule.train_dataloader
    codec = prepare_codec(cfg, run_dir, train_loader)
    digest = config_hash(cfg)
    ckpt_path = None
    if resume:
        ckpt_path = run_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
        _check_resume(ckpt_path, digest)
    save_resolved(cfg, run_dir)

    L.seed_everything(tc.seed, workers=True, verbose=False)
    text = TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize)
    module = build_module(cfg, codec, text)
    if compile_mode:
        from ..fuse import compile_blocks

        compile_blocks(module.dit, backend=compile_backend, mode=compile_mode)
    if channels_last or codec_bf16:  # the codec paths of inference; with only these, accelerate leaves the DiTs alone
        from ..fuse import accelerate

        accelerate(module, channels_last=channels_last, codec_bf16=codec_bf16)
    t0 = time.time()
    with warnings.catch_warnings():
        # The EMA copy of the DiT stays in eval mode by design (FusionModule.train), and Lightning counts its modules
        # in a notice at the start of every fit: "Found N module(s) in eval mode at the start of training".
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    last = run_dir / "checkpoints" / "last.ckpt"
    seconds = time.time() - t0
    if trainer.is_global_zero:
        summary = {"variant": tc.variant, "name": tc.name, "steps": trainer.global_step, "seconds": round(seconds, 1),
                   "params": sum(p.numel() for p in module.dit.parameters() if p.requires_grad),
                   "config_hash": digest}
        speed = {"compile": compile_mode, "codec_bf16": codec_bf16, "channels_last": channels_last}
        summary.update({k: v for k, v in speed.items() if v})  # only the switches used: plain runs stay as they were
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"trained {tc.variant} '{tc.name}' to step {trainer.global_step} in {seconds:.0f}s: "
        f"checkpoint {last}, metrics {run_dir / 'metrics.json'}, TensorBoard {run_dir} (config hash {digest})")
    return module, trainer, run_dir


def cmd_train(args) -> int:
    cfg = load(args.config, args.overrides)
    run_training(cfg, resume=args.resume, compile_mode=args.compile, codec_bf16=args.codec_bf16,
                 channels_last=args.channels_last)
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """The end of a multi-process run (Lightning leaves its process group open): every rank waits for the others,
    then closes its connections, so that no rank exits while another may still be reading from it (which can fail
    that one, and the run's exit status, at the very end). Nothing to do in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
