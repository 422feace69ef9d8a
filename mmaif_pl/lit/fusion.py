"""FusionModule (shared), RegressionFusion and FlowFusion: loss and sample for each MMAIF variant.

The codec and the text encoder are frozen and kept *outside* the module's registry: they are not in the
optimizer, not in the EMA and not in `state_dict` (a checkpoint records their identity instead, and
loading it with another codec is refused). The trainable part is the FusionDiT; `self.ema` is a
denoiser-only EMA (DiT's deepcopy), used for validation and sampling, saved in the checkpoint.
"""
from __future__ import annotations

import copy
import pickle
import re
import zipfile
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from omegaconf import DictConfig, OmegaConf

from ..config import config_hash, to_container
from ..data.color import BT601
from ..errors import UserError
from ..models.codec import LatentCodec, psnr
from ..models.dit import DiTSpec, FusionDiT, ensemble_shifts, shift_ensemble
from ..models.flow import LinearPath, LogitNormalTime, UniformTime, euler_sample
from ..models.text import TextEncoder, to_device_async
from .callbacks import ema_decay, log_for_progress_bar, update_ema
from .matmul_weights import CastMatmulWeights, bf16_autocast_on, dit_units
from .sharding import is_sharded, shard_dit

CKPT_FORMAT = 1


# ----------------------------------------------------------------------------------------------------
# The optimizer
# ----------------------------------------------------------------------------------------------------


def make_adamw(dit: torch.nn.Module, tc, fused: Optional[bool] = None,
               foreach: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW over the DiT's trainable parameters, weight decay on the matrices only (biases, norms, gains and the
    PE tables are not decayed). `fused`: one fused kernel per parameter group for the whole update instead of a
    dozen multi-tensor passes over every parameter, with the step counters on the device. None for both: torch's
    default (multi-tensor on CUDA)."""
    decay = [p for p in dit.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in dit.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tuple(tc.betas),
                             fused=fused, foreach=foreach)


def use_fused_adamw(device: torch.device, grad_scaler) -> bool:
    """The fused AdamW on CUDA (nanoGPT's choice), unless a GradScaler (16-mixed) scales the gradients: the fused
    step would unscale them itself, after Lightning's clipping. Elsewhere torch's default: the CPU runs, and
    with them the committed pipeline, keep their numbers."""
    return device.type == "cuda" and grad_scaler is None


# ----------------------------------------------------------------------------------------------------
# Pixel-space auxiliary loss (paper §7, max-aggregation form)
# ----------------------------------------------------------------------------------------------------


def _sobel_mag(x: torch.Tensor) -> torch.Tensor:
    r, g, b = BT601
    y = r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    y = F.pad(y, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(y, k[None, None]), F.conv2d(y, k.T[None, None])
    return (gx.square() + gy.square() + 1e-12).sqrt()


def fusion_aux_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|F - max(A, B)|_1 + | |grad F| - max(|grad A|, |grad B|) |_1 against the clean sources."""
    intensity = (fused - torch.maximum(a, b)).abs().mean()
    gradient = (_sobel_mag(fused) - torch.maximum(_sobel_mag(a), _sobel_mag(b))).abs().mean()
    return intensity + gradient


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# ----------------------------------------------------------------------------------------------------
# The shared base
# ----------------------------------------------------------------------------------------------------


class FusionModule(L.LightningModule):
    variant = ""
    n_inputs = 2
    timestep = False

    def __init__(self, cfg: DictConfig | dict, codec: LatentCodec, text: TextEncoder):
        super().__init__()
        torch.set_flush_denormal(True)  # zero-initialised paths produce denormals: up to 50x slower on CPU
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        object.__setattr__(self, "codec", codec.eval().requires_grad_(False))  # not a registered submodule
        object.__setattr__(self, "text", text.eval().requires_grad_(False))
        self.spec = DiTSpec.from_config(self.cfg.model)
        self.dit = FusionDiT(codec.channels, self.n_inputs, text.dim, self.spec, timestep=self.timestep)
        self.ema = copy.deepcopy(self.dit).requires_grad_(False).eval()
        self.multiple = codec.factor * self.spec.patch
        self.val_psnr_sum, self.val_psnr_n = 0.0, 0
        self.val_metrics = None
        try:
            from ..metrics.fusion import fusion_metrics

            # every rank validates the whole split (FusionDataModule._eval_loader): nothing to gather across ranks
            self.val_metrics = fusion_metrics(self.cfg.eval.profile, with_reference=True, sync_on_compute=False)
        except ImportError:  # the metrics package is optional for training
            pass

    # -- frozen parts ---------------------------------------------------------------------------------
    def _frozen_to_device(self) -> None:
        for part in (self.codec, self.text):
            p = next(iter(part.parameters()), None)
            p = p if p is not None else next(iter(part.buffers()), None)
            if p is not None and p.device != self.device:
                part.to(self.device)

    def train(self, mode: bool = True):
        super().train(mode)
        self.ema.eval()
        return self

    # Codec precision: float32 by default; `codec_bf16 = True` runs the codec under bf16 autocast on a GPU
    # (`mmaif fuse --codec-bf16`, `mmaif train --codec-bf16`): latents 0.4% from float32's (docs/speed.md).
    codec_bf16 = False

    def _codec_autocast(self):
        on = self.codec_bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._codec_autocast():
            return self.codec.encode(x.float()).float()

    @torch.no_grad()
    def encode_pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sources in one codec call (one batch of 2B): one kernel launch sequence instead of two."""
        return self.encode(torch.cat([a, b])).chunk(2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with self._codec_autocast():
            return self.codec.decode(z.float()).float()

    def embed_text(self, prompts: list[str]):
        pooled, tokens, mask = self.text(list(prompts), device=self.device)
        if self.cfg.text.zero:  # no-prompt ablation: the model sees no language at all
            pooled, tokens = torch.zeros_like(pooled), torch.zeros_like(tokens)
        return pooled, tokens, mask

    # Test-time patch-shift ensemble (models/dit.py: shift_ensemble): 1 (off), 2 or 4 DiT passes per call.
    # Set by the Fuser (`mmaif fuse --patch-shifts`); the default 1 is what training and validation use.
    patch_shifts = 1

    def denoiser(self, x, pooled, tokens, mask, t=None, model=None):
        model = model or self.dit
        if not self.spec.text_tokens:
            tokens = mask = None
        if self.patch_shifts == 1 or self.training:
            return model(x, pooled, t, tokens, mask)
        shifts = ensemble_shifts(self.spec.patch, self.patch_shifts)
        return shift_ensemble(lambda z: model(z, pooled, t, tokens, mask), x, shifts)

    # -- variant API ----------------------------------------------------------------------------------
    def latent_loss(self, z_a, z_b, z_gt, cond, generator, model=None):
        """-> (latent loss, MoE balance loss, predicted clean latent or None, weights for the aux loss)."""
        raise NotImplementedError

    def sample(self, z_a, z_b, cond, steps=None, generator=None, model=None, shift=None) -> torch.Tensor:
        raise NotImplementedError

    # -- shared training logic ------------------------------------------------------------------------
    def _generator(self, offset: int = 0) -> torch.Generator:
        """Noise and t from (seed, step): a resumed run draws what the uninterrupted one drew."""
        return torch.Generator().manual_seed(int(self.cfg.train.seed) * 1_000_003 + self.global_step + offset)

    @staticmethod
    def training_image_keys(cfg) -> tuple[str, ...]:
        """The images `compute_loss` reads from a batch: the clean sources only for the pixel-space aux loss."""
        return ("a", "b", "target") + (("a_clean", "b_clean") if cfg.train.aux_weight > 0 else ())

    # Under bf16 autocast on CUDA the training DiT runs on bf16 copies of its matmul weights made in one multi-tensor
    # cast (lit/matmul_weights.py): autocast's values, two kernel families per step instead of one cast per weight
    # in the forward and one per gradient in the backward. None: on CUDA only (the CPU copies between dtypes one
    # tensor at a time, and measured slower); True / False force it (the tests run it on the CPU).
    cast_matmul_weights: Optional[bool] = None

    def training_denoiser(self):
        """The DiT as a training step calls it: on one-cast bf16 copies of its matmul weights under bf16 autocast.
        Not under a sharding strategy, whose flat parameters are not the layers' own (single device and DDP are)."""
        on = self.cast_matmul_weights if self.cast_matmul_weights is not None else self.device.type == "cuda"
        strategy = self._trainer.strategy if self._trainer is not None else None
        sharded = isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))
        if not (on and bf16_autocast_on(self.device)) or sharded:
            return None
        casts = getattr(self, "_matmul_casts", None)
        if casts is None or casts.module is not self.dit:  # made once, at the first step: the DiT is on its device
            if casts is not None:  # a DiT put in place of the old one: the old one's hooks go with it
                casts.remove()
            casts = self._matmul_casts = CastMatmulWeights(self.dit, units=dit_units(self.dit))
        return casts

    def compute_loss(self, batch: dict, generator: torch.Generator, model=None) -> dict:
        self._frozen_to_device()
        if model is None and self.training:
            model = self.training_denoiser()
        # the three images of a sample in one codec call (a larger batch; per-sample results are unchanged)
        z_a, z_b, z_gt = self.encode(torch.cat([batch["a"], batch["b"], batch["target"]])).chunk(3)
        cond = self.embed_text(batch["prompt"])
        latent, balance, z_hat, keep = self.latent_loss(z_a, z_b, z_gt, cond, generator, model)
        out = {"latent": latent, "balance": balance}
        loss = latent + self.cfg.model.balance_weight * balance
        if self.cfg.train.aux_weight > 0 and z_hat is not None and keep.any():
            fused = self.decode(z_hat[keep])
            aux = fusion_aux_loss(fused, batch["a_clean"][keep], batch["b_clean"][keep])
            loss = loss + self.cfg.train.aux_weight * aux
            out["aux"] = aux
        out["loss"] = loss
        return out

    def training_step(self, batch, batch_idx):
        out = self.compute_loss(batch, self._generator())
        bs = batch["a"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False, batch_size=bs)
        log_for_progress_bar(self, {"loss": out["loss"]}, bs)
        return out["loss"]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's clipping, also for the fused AdamW: Lightning's mixed-precision plugin refuses to clip for an
        optimizer that unscales inside its step, as the fused one can; without a GradScaler (bf16-mixed, which is
        when `use_fused_adamw` picks it) nothing is scaled, and clipping is the plain precision's."""
        plugin = self.trainer.precision_plugin
        if getattr(optimizer, "_step_supports_amp_scaling", False) and getattr(plugin, "scaler", None) is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or self.trainer.gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val or 0.0, algorithm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs):
        # EMA right after the step (not in on_train_batch_end, which runs after the checkpoint callback:
        # a resumed run would then miss one update)
        super().optimizer_step(*args, **kwargs)
        if is_sharded(self.ema):  # FSDP2 leaves a root unit gathered after its forward (the EMA's, in validation)
            self.ema.reshard()
            self.dit.reshard()
        update_ema(self.ema, self.dit, ema_decay(self.global_step, self.cfg.train.ema_decay))

    @torch.no_grad()
    def fuse(self, a: torch.Tensor, b: torch.Tensor, prompts: list[str], steps: Optional[int] = None,
             seed: int = 0, use_ema: bool = True, shift: Optional[float] = None) -> torch.Tensor:
        """Fused images (same size as a, b; any size: padded to the model's multiple, cropped back)."""
        self._frozen_to_device()
        H, W = a.shape[-2:]
        z_a, z_b = self.encode_pair(_pad_to(a, self.multiple), _pad_to(b, self.multiple))
        gen = torch.Generator().manual_seed(seed)
        z = self.sample(z_a, z_b, self.embed_text(prompts), steps, gen, self.ema if use_ema else self.dit, shift)
        return self.decode(z)[..., :H, :W].clamp(0, 1)

    def on_validation_epoch_start(self):
        self.val_psnr_sum, self.val_psnr_n = 0.0, 0

    def validation_step(self, batch, batch_idx):
        bs = batch["a"].shape[0]
        out = {}
        if batch.get("target") is not None and batch["a"].shape[-1] % self.multiple == 0 \
                and batch["a"].shape[-2] % self.multiple == 0:
            losses = self.compute_loss(batch, torch.Generator().manual_seed(batch_idx), model=self.ema)
            self.log("val/loss", losses["latent"], batch_size=bs, sync_dist=True)  # the same on every rank
        fused = self.fuse(batch["a"], batch["b"], batch["prompt"], seed=batch_idx)
        out["fused"] = fused
        if batch.get("target") is not None:
            per = [psnr(f[None], t[None]).item() for f, t in zip(fused, batch["target"])]
            self.val_psnr_sum += sum(per)
            self.val_psnr_n += len(per)
            if self.val_metrics is not None:
                self.val_metrics.to(self.device).update(fused, batch["a"], batch["b"], batch["target"])
        return out

    def on_validation_epoch_end(self):
        if self.val_psnr_n:
            value = self.val_psnr_sum / self.val_psnr_n
            self.log("val/psnr", value, sync_dist=True)  # sync_dist: a mean of equal values, as Lightning asks
            self.log("hp/psnr", value, sync_dist=True)
        if self.val_metrics is not None and self.val_psnr_n:
            for name, value in self.val_metrics.compute().items():
                self.log(f"val/{name}", float(value), sync_dist=True)
            self.val_metrics.reset()

    def on_train_start(self):
        logger = self.logger
        if logger is not None and hasattr(logger, "log_hyperparams"):
            flat = {k: str(v) if isinstance(v, (list, dict)) else v
                    for k, v in _flatten(to_container(self.cfg)).items()}
            logger.log_hyperparams(flat, {"hp/psnr": 0.0})

    # AdamW's implementation: None chooses (`use_fused_adamw`); True / False force it (the tests run the fused
    # path on the CPU). Like `mmaif train --compile`, it changes float rounding and speed, not the experiment.
    fused_adamw: Optional[bool] = None

    def configure_model(self):
        """Under `train.strategy=fsdp` (lit/sharding.py, Lightning gives the module a device mesh): shard the DiT and
        its EMA copy block by block, alike, so each EMA shard updates from its own DiT shard. Once: the hook runs
        again for a later fit or validate."""
        if self.device_mesh is None or is_sharded(self.dit):
            return
        mesh = self.device_mesh["data_parallel"]
        shard_dit(self.dit, mesh)
        shard_dit(self.ema, mesh)

    def configure_optimizers(self):
        tc = self.cfg.train
        fused = self.fused_adamw
        if fused is None:
            plugin = self._trainer.precision_plugin if self._trainer is not None else None
            fused = use_fused_adamw(self.device, getattr(plugin, "scaler", None))
        opt = make_adamw(self.dit, tc, fused=True if fused else None)
        warmup = max(1, int(tc.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint identity --------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict:
        return {"format": CKPT_FORMAT, "variant": self.variant, "config": to_container(self.cfg),
                "config_hash": config_hash(self.cfg), "codec": self.codec.identity(), "text": self.text.identity()}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["mmaif"] = self.checkpoint_meta()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def source_prior(cfg, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor | float:
    """The latent both variants start from: the mean of the source latents, or 0 without `source_skip`."""
    return (z_a + z_b) / 2 if cfg.model.get("source_skip", False) else 0.0


# ----------------------------------------------------------------------------------------------------
# The two variants
# ----------------------------------------------------------------------------------------------------


class RegressionFusion(FusionModule):
    """One pass, no timestep: z_hat = prior + f(z_a, z_b, c); loss = MSE(z_hat, z_gt).

    prior = (z_a + z_b) / 2 with `model.source_skip` (else 0): with the zero-initialised output layer the
    untrained model is exactly average fusion, and the DiT learns the correction (what to select, what to
    restore) instead of re-synthesising the whole latent."""

    variant, n_inputs, timestep = "regression", 2, False

    def predict(self, z_a, z_b, cond, model=None):
        out, balance = self.denoiser(torch.cat([z_a, z_b], 1), *cond, model=model)
        return source_prior(self.cfg, z_a, z_b) + out.float(), balance

    def latent_loss(self, z_a, z_b, z_gt, cond, generator, model=None):
        z_hat, balance = self.predict(z_a, z_b, cond, model)
        keep = torch.ones(z_hat.shape[0], dtype=torch.bool, device=z_hat.device)
        return F.mse_loss(z_hat, z_gt), balance, z_hat, keep

    def sample(self, z_a, z_b, cond, steps=None, generator=None, model=None, shift=None):
        return self.predict(z_a, z_b, cond, model)[0]


class FlowFusion(FusionModule):
    """Rectified flow in latent space: z_t = (1 - t) noise + t z_gt, v = f(z_t, t, z_a, z_b, c),
    loss = MSE(v, z_gt - noise); sampled with Euler from t = 0 (noise) to 1 in `sample_steps` steps.

    With `model.source_skip` the noise is centred on the sources' latent mean,
    noise = (z_a + z_b) / 2 + sigma e, e ~ N(0, I), sigma = `model.prior_noise`: the flow transports a
    source-informed prior to the data, so a one-step sample already starts from average fusion (t = 0 is
    still the noisy end). A small sigma turns the flow into a short refinement of that prior (a bridge
    from the sources to the target, as in image-to-image flows) instead of a generator from scratch.

    `model.prediction`: `velocity` (the DiT outputs v) or `data` (x-prediction, as JiT: the DiT outputs the
    clean latent x1, a residual on the prior with source_skip, and v = (x1 - z_t) / (1 - t)). With data
    prediction the network never has to reproduce the unit-variance noise of its input to form v, and
    the untrained model is average fusion at every step count."""

    variant, n_inputs, timestep = "flow", 3, True

    def __init__(self, cfg, codec, text):
        super().__init__(cfg, codec, text)
        tc = self.cfg.train
        if tc.t_sampling == "logit_normal":
            self.t_sampler = LogitNormalTime(tc.logit_mean, tc.logit_std)
        elif tc.t_sampling == "uniform":
            self.t_sampler = UniformTime()
        else:
            raise UserError(f"train.t_sampling must be logit_normal or uniform, got {tc.t_sampling!r}")
        if self.cfg.model.get("prior_noise", 1.0) < 0:
            raise UserError(f"model.prior_noise must be >= 0, got {self.cfg.model.prior_noise}")
        self.prediction = self.cfg.model.get("prediction", "velocity")
        if self.prediction not in ("velocity", "data"):
            raise UserError(f"model.prediction must be velocity or data, got {self.prediction!r}")
        self.path = LinearPath()

    def start(self, z_a, z_b, generator=None) -> torch.Tensor:
        """The t = 0 sample: prior + sigma e."""
        e = to_device_async(torch.randn(z_a.shape, generator=generator), z_a.device).to(z_a)
        return source_prior(self.cfg, z_a, z_b) + self.cfg.model.get("prior_noise", 1.0) * e

    def velocity(self, z_t, t, z_a, z_b, cond, model=None):
        """v(z_t, t | sources, prompt), whichever quantity the DiT is trained to output."""
        out, balance = self.denoiser(torch.cat([z_t, z_a, z_b], 1), *cond, t=t, model=model)
        if self.prediction == "velocity":
            return out.float(), balance
        x1 = source_prior(self.cfg, z_a, z_b) + out.float()
        return self.path.velocity_from_data(x1, z_t, t), balance

    def latent_loss(self, z_a, z_b, z_gt, cond, generator, model=None):
        noise = self.start(z_a, z_b, generator)
        t = to_device_async(self.t_sampler(z_gt.shape[0], generator), z_gt.device).to(z_gt)
        ps = self.path.sample(z_gt, noise, t)
        v, balance = self.velocity(ps.z_t, t, z_a, z_b, cond, model)
        # the same clamp as the prediction keeps the target consistent near t = 1 (= z_gt - noise below it)
        target = ps.velocity if self.prediction == "velocity" else self.path.velocity_from_data(z_gt, ps.z_t, t)
        z_hat = self.path.clean_estimate(ps.z_t, v, t)
        return F.mse_loss(v, target), balance, z_hat, t > 0.5  # aux only where z_hat is sharp

    def sample(self, z_a, z_b, cond, steps=None, generator=None, model=None, shift=None):
        steps = steps or self.cfg.train.sample_steps
        shift = self.cfg.train.time_shift if shift is None else shift
        noise = self.start(z_a, z_b, generator)

        return euler_sample(lambda z, t: self.velocity(z, t, z_a, z_b, cond, model)[0], noise, steps, shift)


VARIANTS = {"regression": RegressionFusion, "flow": FlowFusion}


def build_module(cfg: DictConfig, codec: LatentCodec, text: TextEncoder) -> FusionModule:
    if cfg.train.variant not in VARIANTS:
        raise UserError(f"train.variant must be one of {', '.join(VARIANTS)}, got {cfg.train.variant!r}")
    return VARIANTS[cfg.train.variant](cfg, codec, text)


# ----------------------------------------------------------------------------------------------------
# Loading checkpoints safely (they are untrusted input)
# ----------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a checkpoint: torch.save writes a zip archive, and this file is not one "
                        f"(another kind of file, or a truncated copy)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        # torch's message is advice on loading it anyway; what matters is the object it refused
        refused = re.search(r"WeightsUnpickler error:\s*(.+?\.)(?:\s|$)", str(exc))
        detail = refused.group(1) if refused else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: refused to load: it holds more than tensors and plain containers, which an mmaif "
                        f"checkpoint never does ({detail})") from None
    if not isinstance(ckpt, dict) or "mmaif" not in ckpt:
        raise UserError(f"{path}: not an mmaif checkpoint (no 'mmaif' record)")
    return ckpt


def load_module(path: str | Path, codec: Optional[LatentCodec] = None, text: Optional[TextEncoder] = None,
                codec_path: Optional[str] = None) -> FusionModule:
    """Rebuild a FusionModule from a checkpoint for inference; the codec must be the one it was trained with."""
    ckpt = read_checkpoint(path)
    meta = ckpt["mmaif"]
    cfg = OmegaConf.create(meta["config"])
    if codec is None:
        folder = codec_path or cfg.codec.path
        if not folder:
            raise UserError(f"{path}: the checkpoint names no codec folder; pass one")
        codec = LatentCodec.load(folder)
    if codec.identity()["digest"] != meta["codec"]["digest"]:
        raise UserError(f"{path}: trained with codec {meta['codec']['kind']} digest {meta['codec']['digest']}, "
                        f"but the given codec is {codec.kind} digest {codec.identity()['digest']}; refusing to mix them")
    if text is None:
        text = TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize)
    if text.identity()["dim"] != meta["text"]["dim"]:
        raise UserError(f"{path}: trained with text encoder {meta['text']}, given {text.identity()}")
    module = build_module(cfg, codec, text)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()
