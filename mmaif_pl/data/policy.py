"""Which degradations a sample gets: how many, which ones, in what order, on which source.

- 1 to 3 operators per sample (`degrade.count_weights`), drawn without replacement with the weights of
  `degrade.operators`, never two that contradict each other (low light with over-exposure, low with high
  contrast); with probability `degrade.clean_prob` the sample stays clean so the model also sees clean input.
- Applied in a physical order (scene and weather, then exposure, optics, sampling, sensor, codec), which is
  also the order the prompt names them.
- Per task (DESIGN.md section 6, mmaif_paper.md section 5.3):
  * VIF: the visible source (a) gets the chain. The infrared source (b) gets only what is physical for a
    thermal camera: no rain, snow, low light or over-exposure; haze becomes a mild blur (long waves pass
    through fog); stripe noise goes on the IR source only; blur, noise, resampling, JPEG and contrast on both.
  * MEF / MFF: both sources get the identical chain with identical parameters, except that sensor noise
    (Gaussian noise, low-light noise) is drawn independently per source, as two exposures would have it.

Everything is a pure function of a `numpy.random.Generator`: same state, same records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from .degrade import OPERATOR_NAMES, OPERATORS, SEVERITIES, apply_record, check_operator, check_param, make_record
from .degrade import check_severity, sample_params

TASKS = ("vif", "mef", "mff")
MIXED = "mixed"  # severity drawn per operator from SEVERITIES

_GENERAL = ("gaussian_noise", "gaussian_blur", "motion_blur", "downsample", "jpeg", "rain", "snow", "haze")
TASK_OPERATORS: dict[str, tuple[str, ...]] = {
    "vif": _GENERAL + ("low_light", "over_exposure", "low_contrast", "high_contrast", "ir_stripes"),
    # MEF sources are under/over-exposed by construction: another exposure change would blur the task.
    "mef": _GENERAL + ("low_contrast", "high_contrast"),
    "mff": _GENERAL + ("low_light", "over_exposure", "low_contrast", "high_contrast"),
}
CONTRADICTORY = (frozenset({"low_light", "over_exposure"}), frozenset({"low_contrast", "high_contrast"}))
APPLY_ORDER = ("haze", "rain", "snow", "low_light", "over_exposure", "low_contrast", "high_contrast",
               "gaussian_blur", "motion_blur", "downsample", "gaussian_noise", "ir_stripes", "jpeg")
SENSOR_NOISE = frozenset({"gaussian_noise", "low_light"})  # independent noise per source
VIF_VISIBLE_ONLY = frozenset({"rain", "snow", "low_light", "over_exposure"})
IR_ONLY = frozenset({"ir_stripes"})


def contradicts(name: str, chosen: Sequence[str]) -> bool:
    return any(name in pair and (pair - {name}) & set(chosen) for pair in CONTRADICTORY)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; valid: {', '.join(TASKS)}")
    return task


def draw_names(pool: Sequence[str], n: int, rng: np.random.Generator,
               weights: Optional[Sequence[float]] = None) -> list[str]:
    """Up to `n` distinct, mutually compatible operators from `pool` (weighted), in apply order."""
    weight = dict(zip(pool, weights if weights is not None else [1.0] * len(pool)))
    chosen: list[str] = []
    while len(chosen) < n:
        options = [o for o in pool if o not in chosen and not contradicts(o, chosen) and weight[o] > 0]
        if not options:
            break
        w = np.array([weight[o] for o in options], dtype=float)
        chosen.append(options[int(rng.choice(len(options), p=w / w.sum()))])
    return sorted(chosen, key=APPLY_ORDER.index)


@dataclass
class DegradePolicy:
    severity: str = MIXED
    clean_prob: float = 0.1
    count_weights: Sequence[float] = (0.5, 0.3, 0.2)
    operators: Mapping[str, float] = field(default_factory=dict)  # empty: all, equal weights
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-operator overrides

    def __post_init__(self) -> None:
        check_severity(self.severity, "degrade.severity", extra=(MIXED,))
        if not 0.0 <= float(self.clean_prob) <= 1.0:
            raise ConfigError(f"degrade.clean_prob = {self.clean_prob} is out of range; valid range: [0, 1]")
        w = [float(x) for x in self.count_weights]
        if not 1 <= len(w) <= 3 or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"degrade.count_weights = {list(self.count_weights)}: give 1 to 3 non-negative "
                              "weights for P(1), P(2), P(3) operators, not all zero")
        self.count_weights = tuple(w)
        for name, weight in dict(self.operators).items():
            check_operator(name, "in degrade.operators")
            if float(weight) < 0:
                raise ConfigError(f"degrade.operators.{name} = {weight}: weights must be >= 0")
        if self.operators and not any(float(v) > 0 for v in self.operators.values()):
            raise ConfigError("degrade.operators: every weight is zero; valid operators: " + ", ".join(OPERATOR_NAMES))
        for name, overrides in dict(self.params).items():
            check_operator(name, "in degrade.params")
            for key, value in dict(overrides).items():
                check_param(name, key, value, where="degrade.params.")

    @classmethod
    def from_config(cls, cfg: Any) -> "DegradePolicy":
        """From the `degrade` section (an OmegaConf node or a dataclass)."""
        from omegaconf import OmegaConf

        def plain(x):
            return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x

        return cls(severity=cfg.severity, clean_prob=cfg.clean_prob, count_weights=list(plain(cfg.count_weights)),
                   operators=dict(plain(cfg.operators) or {}), params=dict(plain(getattr(cfg, "params", {})) or {}))

    # -- sampling ------------------------------------------------------------------------------------

    def weight(self, name: str) -> float:
        return float(self.operators.get(name, 0.0)) if self.operators else 1.0

    def pool(self, task: str) -> list[str]:
        """The operators this task can draw (positive weight), in apply order."""
        return [n for n in TASK_OPERATORS[check_task(task)] if self.weight(n) > 0]

    def choose(self, task: str, rng: np.random.Generator) -> list[str]:
        """Operator names for one sample, in apply order; [] for a clean sample."""
        pool = self.pool(task)
        if not pool or rng.random() < self.clean_prob:
            return []
        p = np.asarray(self.count_weights) / sum(self.count_weights)
        n = int(rng.choice(len(p), p=p)) + 1
        return draw_names(pool, n, rng, [self.weight(o) for o in pool])

    def records_for(self, task: str, names: Sequence[str], rng: np.random.Generator,
                    severity: Optional[str] = None) -> list[dict]:
        """Records (per source) for applying `names` on a `task` pair, parameters drawn at `severity`
        (default: the policy's; 'mixed' draws one per operator)."""
        check_task(task)
        severity = severity or self.severity
        records: list[dict] = []
        for name in sorted(names, key=APPLY_ORDER.index):
            check_operator(name)
            if name not in TASK_OPERATORS[task]:
                raise ConfigError(f"degradation '{name}' does not apply to {task} pairs; valid for {task}: "
                                  + ", ".join(TASK_OPERATORS[task]))
            sev = SEVERITIES[int(rng.integers(len(SEVERITIES)))] if severity == MIXED else check_severity(severity)
            params = sample_params(name, rng, sev, self.params.get(name))
            other_seed = int(rng.integers(2**31 - 1))  # drawn always, so the stream does not depend on the task
            params_b = {**params, "seed": other_seed} if name in SENSOR_NOISE else params
            if task != "vif":
                records += [make_record(name, params, "a", sev), make_record(name, params_b, "b", sev)]
                continue
            if name not in IR_ONLY:
                records.append(make_record(name, params, "a", sev))
            if name == "haze":
                records.append(make_record(name, {"ir": "blur", "ir_sigma": params["ir_sigma"]}, "b", sev))
            elif name not in VIF_VISIBLE_ONLY:
                records.append(make_record(name, params_b, "b", sev))
        return records

    def sample(self, task: str, rng: np.random.Generator) -> list[dict]:
        """Degradation records for one pair of `task`: [] means clean."""
        return self.records_for(task, self.choose(task, rng), rng)


def apply_records(a: np.ndarray, b: np.ndarray, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Apply each record to its source, in order."""
    for rec in records:
        if rec["source"] == "a":
            a, _ = apply_record(a, rec)
        elif rec["source"] == "b":
            b, _ = apply_record(b, rec)
        else:
            raise ValueError(f"record source must be 'a' or 'b', got {rec['source']!r}")
    return a, b


def degrade_pair(a: np.ndarray, b: np.ndarray, task: str, rng: np.random.Generator,
                 policy: Optional[DegradePolicy] = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw and apply the degradations of one pair: (a', b', records)."""
    records = (policy or DegradePolicy()).sample(task, rng)
    a2, b2 = apply_records(a, b, records)
    return a2, b2, records


def applied_names(records: Sequence[dict]) -> list[str]:
    """The distinct operator names of a record list, in order (what the prompt names)."""
    return list(dict.fromkeys(r["name"] for r in records))
