"""Experiment configuration: a structured schema, YAML files merged left to right, `key=value` overrides.

Every section is a dataclass, so an unknown or mistyped key fails at load time with a message that names
it and lists the valid keys. The resolved config is saved beside each run with a stable hash; a resumed
checkpoint whose hash differs is refused by the training code.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


from .atomic import atomic_write_text  # noqa: F401  (re-exported: callers import it from here)
from .errors import ConfigError  # noqa: E402  (re-exported)


# ----------------------------------------------------------------------------------------------------
# Schema. One dataclass per section; the owning module interprets it.
# ----------------------------------------------------------------------------------------------------


@dataclass
class DatasetEntry:
    """One training source: the embedded default (`root: data`) or any adapter root."""

    root: str = "data"
    task: Optional[str] = None  # vif | mef | mff; None: inferred from the folder names
    layout: Optional[str] = None  # adapter name; None: detected
    split: Optional[str] = "train"
    weight: float = 1.0


@dataclass
class DataConfig:
    root: str = "data"  # the embedded default dataset (built by `mmaif data build`)
    prepared: str = "prepared"  # frozen val/test splits written by `mmaif data prepare`
    datasets: list[DatasetEntry] = field(default_factory=list)  # empty: the embedded default, all tasks
    task_weights: dict[str, float] = field(default_factory=lambda: {"vif": 1.0, "mef": 1.0, "mff": 1.0})
    crop: int = 128  # training crop side (pixels) for the square bucket
    buckets: list[list[int]] = field(default_factory=lambda: [[1, 1]])  # aspect ratios (w, h) of crops
    flip: bool = True
    batch_size: int = 8
    num_workers: int = 0
    samples_per_epoch: int = 512
    val_fraction: float = 0.0  # 0: validate on the prepared split; > 0: on this fraction of samples_per_epoch, drawn on the fly
    seed: int = 0
    cache_mb: float = 256  # per loader worker: decoded clean pairs (and teacher targets) kept in memory
    # `mmaif data prepare` (frozen val/test splits)
    eval_crop: int = 256  # centre crop of eval images to at most this side (0: whole image); sides floored to the model multiple
    val_samples: int = 8  # per task, drawn with the training policy from the root's val (else train) pairs
    test_per_operator: int = 2  # per task, operator and severity (mild, heavy): single-degradation test samples
    test_combos: int = 4  # per task, count (2, 3) and severity (mild, heavy): multi-degradation test samples
    test_clean: int = 2  # per task: undegraded test samples


@dataclass
class DegradeConfig:
    # mild | moderate | heavy | mixed (drawn per operator, so prompts' severity words carry information)
    severity: str = "mixed"
    clean_prob: float = 0.1
    count_weights: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2])  # P(1), P(2), P(3) operators
    operators: dict[str, float] = field(default_factory=dict)  # name -> sampling weight; empty: all, equal
    # per-operator parameter overrides, e.g. {jpeg: {quality: [10, 30]}, haze: {beta: 1.5}}; checked against
    # each operator's valid range (mmaif_pl/data/degrade.py)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PromptConfig:
    ambiguous_prob: float = 0.1
    severity_words_prob: float = 0.5


@dataclass
class CodecConfig:
    kind: str = "linear"  # linear (PCA of pixel patches) | kl (AutoencoderKL) | tiny (AutoencoderTiny) | pretrained
    path: Optional[str] = None  # codec folder: written by `mmaif train-codec`, read by `mmaif train`
    factor: int = 4  # spatial downsampling
    channels: int = 16  # latent channels
    block_channels: list[int] = field(default_factory=lambda: [64, 128])
    # kl: resnet layers per level; tiny: blocks per level below full resolution (TAESD has 1 at full resolution);
    # or, for tiny, one count per level, full resolution first (the decoder mirrors it)
    layers_per_block: Any = 1
    residual: bool = True  # kl/tiny: learn a zero-initialised residual on top of the fitted linear codec
    fit_batches: int = 32  # batches of training images for the PCA fit and the latent statistics
    steps: int = 0  # training steps for learned kinds
    lr: float = 5e-4
    batch_size: int = 8
    crop: int = 128
    kl_weight: float = 1e-6
    seed: int = 0


@dataclass
class TextConfig:
    encoder: str = "minilm"  # minilm (packaged, offline) | path to a local Hugging Face encoder folder
    max_length: int = 77
    normalize: bool = False  # L2-normalise the pooled embedding (sentence-transformers style)
    zero: bool = False  # ablation: replace every prompt by zeros


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | S | B | L
    hidden: Optional[int] = None  # overrides of the preset
    depth: Optional[int] = None
    heads: Optional[int] = None
    patch: int = 2
    patch_embed: str = "linear"  # linear | conv
    lora_adaln: bool = True
    lora_rank: Optional[int] = None  # None: hidden // 4
    block_pe: bool = True
    pe_grid: int = 32
    nafblock: bool = True
    rope: bool = True
    value_residual: bool = True
    moe: bool = True
    experts: int = 4
    top_k: int = 2
    shared_expert: bool = True
    balance_weight: float = 0.01
    text_tokens: bool = False
    mlp_ratio: float = 4.0
    # regression predicts a residual on the sources' latent mean; flow starts from noise around it
    source_skip: bool = False
    # flow: std of the Gaussian around that prior at t = 0 (latents are unit-scale per channel, so 1.0
    # buries the sources; a small sigma makes the flow a short stochastic refinement of the prior)
    prior_noise: float = 1.0
    # flow: what the DiT outputs. velocity: v directly; data: the clean latent x1 (as a residual on the
    # prior with source_skip), turned into v = (x1 - z_t) / (1 - t), so the net never has to copy the noise
    prediction: str = "velocity"


@dataclass
class TrainConfig:
    variant: str = "regression"  # regression | flow
    name: str = "regression"  # run name (TensorBoard folder, checkpoint folder)
    max_steps: int = 1000
    # a variant's budget relative to the scale's max_steps (flow: 3), so one variant file fits every scale
    steps_factor: float = 1.0
    max_time_minutes: Optional[float] = None
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    aux_weight: float = 0.0  # pixel-space intensity + gradient loss through the frozen decoder
    t_sampling: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0  # SD3 shift of the sampling schedule (>1 spends more steps near noise)
    sample_steps: int = 4
    precision: str = "32-true"  # any Lightning precision; "auto": bf16-mixed where the GPU supports it
    val_batches: int = 4
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"  # a Lightning strategy name; "fsdp": the sharded DiT of lit/sharding.py (FSDP2)
    num_nodes: int = 1
    val_every: int = 250
    log_every: int = 25
    seed: int = 0
    out_dir: str = "runs"


@dataclass
class EvalConfig:
    profile: str = "default"
    steps: list[int] = field(default_factory=lambda: [4])


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    node: Any = schema
    for part in [p for p in dotted.split(".")[:-1] if p]:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node = node[part]
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, schema: DictConfig, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        valid = _valid_keys(schema, key)
        return ConfigError(f"{origin}: unknown config key '{key}'; valid keys here: {', '.join(valid)}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{origin}: bad value for '{key}': {exc.msg if hasattr(exc, 'msg') else exc}")
    return ConfigError(f"{origin}: {exc}")


def resolve_path(name: str | os.PathLike) -> Path:
    """A config file by path, or by name relative to `experiments/` (the `.yaml` may be left out)."""
    p = Path(name)
    candidates = [p, p.with_suffix(".yaml"), EXPERIMENTS_DIR / p, (EXPERIMENTS_DIR / p).with_suffix(".yaml")]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config file not found: {name} (looked in . and {EXPERIMENTS_DIR})")


def load(files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- each file in order <- `key=value` overrides. Unknown keys are an error."""
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema
    for f in files:
        path = resolve_path(f)
        try:
            layer = OmegaConf.load(path)
        except Exception as exc:  # yaml syntax errors and the like
            raise ConfigError(f"{path}: cannot parse YAML: {exc}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise _explain(exc, schema, str(path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise _explain(exc, schema, "override") from None
    OmegaConf.set_readonly(cfg, False)
    return cfg


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_hash(cfg: DictConfig | dict) -> str:
    """Stable over key order and formatting: sha256 of the canonical JSON of the resolved config."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, run_dir: str | os.PathLike) -> str:
    """Write `config.yaml` (resolved) and `config.hash` into the run folder; return the hash."""
    run_dir = Path(run_dir)
    digest = config_hash(cfg)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    atomic_write_text(run_dir / "config.hash", digest + "\n")
    return digest
