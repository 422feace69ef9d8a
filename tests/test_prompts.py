"""Prompts name every applied degradation (or are one ambiguous request), and depend only on records + Generator."""
from __future__ import annotations

import numpy as np
import pytest

from mmaif_pl.data import prompts as P
from mmaif_pl.data.degrade import OPERATOR_NAMES
from mmaif_pl.data.policy import DegradePolicy
from mmaif_pl.errors import ConfigError


def rec(name, severity="heavy", source="a"):
    return {"name": name, "params": {}, "source": source, "severity": severity}


def test_pools_cover_every_operator_and_name_their_degradation():
    assert set(P.POOLS) == set(OPERATOR_NAMES) == set(P.SEVERITY_POOLS) == set(P.KEYWORDS)
    for key, pool in P.POOLS.items():
        assert len(set(pool)) >= 10, key
        for sentence in pool + P.SEVERITY_POOLS[key]:
            assert any(w in sentence.lower() for w in P.KEYWORDS[key]), (key, sentence)
            assert not sentence.endswith((".", ",")) and sentence[0].isupper()
        for template in P.SEVERITY_POOLS[key]:
            assert "{level}" in template
    assert len(set(P.AMBIGUOUS)) >= 10
    # ambiguous requests must not name a degradation
    every_keyword = {w for ws in P.KEYWORDS.values() for w in ws}
    for sentence in P.AMBIGUOUS + P.NEUTRAL:
        assert not any(w in sentence.lower() for w in every_keyword), sentence


def test_composition_format():
    assert P.compose(["Remove the rain drops from this image"]) == "Remove the rain drops from this image."
    assert P.compose(["Edit out the snow from this scene", "Fix the noise in this photo"]) == \
        "Edit out the snow from this scene, and fix the noise in this photo."
    assert P.compose(["Balance the lighting", "Clean up the rain", "The image is motion blurred"]) == \
        "Balance the lighting, clean up the rain, and the image is motion blurred."
    assert P.compose(["Dehaze it", "IR stripes are bad"]) == "Dehaze it, and IR stripes are bad."


def test_every_prompt_names_every_degradation_or_is_ambiguous():
    policy = DegradePolicy(clean_prob=0.05)
    rng = np.random.default_rng(0)
    kinds = {"ambiguous": 0, "named": 0, "neutral": 0}
    for i in range(3000):
        records = policy.sample(("vif", "mef", "mff")[i % 3], rng)
        state = rng.bit_generator.state
        parts = P.prompt_parts(records, rng, ambiguous_prob=0.1)
        rng.bit_generator.state = state
        prompt = P.make_prompt(records, rng)
        assert prompt == P.compose([s for _, s in parts])
        names = list(dict.fromkeys(r["name"] for r in records))
        if not records:
            assert parts[0][0] == "neutral" and parts[0][1] in P.NEUTRAL
            kinds["neutral"] += 1
        elif parts[0][0] == "ambiguous":
            assert len(parts) == 1 and parts[0][1] in P.AMBIGUOUS  # the whole prompt is one vague request
            kinds["ambiguous"] += 1
        else:
            assert [k for k, _ in parts] == names  # one sentence per degradation, in applied order
            for name in names:
                assert any(w in prompt.lower() for w in P.KEYWORDS[name]), (name, prompt)
            kinds["named"] += 1
    named_or_amb = kinds["named"] + kinds["ambiguous"]
    assert 0.07 < kinds["ambiguous"] / named_or_amb < 0.13
    assert kinds["neutral"] > 0


def test_severity_words_follow_the_record():
    rng = np.random.default_rng(1)
    heavy = [P.make_prompt([rec("rain", "heavy")], rng, _cfg(0.0, 1.0)) for _ in range(50)]
    mild = [P.make_prompt([rec("rain", "mild")], rng, _cfg(0.0, 1.0)) for _ in range(50)]
    assert all(any(w in p for w in P.LEVEL_WORDS["heavy"]) for p in heavy)
    assert all(any(w in p for w in P.LEVEL_WORDS["mild"]) for p in mild)
    plain = [P.make_prompt([rec("rain", "custom")], rng, _cfg(0.0, 1.0)) for _ in range(20)]
    assert all(p[:-1] in P.POOLS["rain"] for p in plain)  # no severity known: no level words
    never = [P.make_prompt([rec("rain", "heavy")], rng, _cfg(0.0, 0.0)) for _ in range(20)]
    assert all(p[:-1] in P.POOLS["rain"] for p in never)


def _cfg(amb, sev):
    from types import SimpleNamespace

    return SimpleNamespace(ambiguous_prob=amb, severity_words_prob=sev)


def test_ambiguous_probability_is_configurable():
    rng = np.random.default_rng(2)
    records = [rec("haze"), rec("jpeg")]
    always = {P.make_prompt(records, rng, _cfg(1.0, 0.5)) for _ in range(30)}
    assert always <= {s + "." for s in P.AMBIGUOUS}
    never = [P.make_prompt(records, rng, _cfg(0.0, 0.5)) for _ in range(30)]
    assert not any(p[:-1] in P.AMBIGUOUS for p in never)


def test_prompt_is_a_pure_function_of_records_and_generator():
    records = [rec("low_light", "mild"), rec("motion_blur", "heavy"), rec("motion_blur", "heavy", "b")]
    a = [P.make_prompt(records, np.random.default_rng(s)) for s in range(20)]
    b = [P.make_prompt(records, np.random.default_rng(s)) for s in range(20)]
    assert a == b and len(set(a)) > 5


def test_bad_prompt_config():
    with pytest.raises(ConfigError, match="prompts.ambiguous_prob"):
        P.make_prompt([rec("rain")], np.random.default_rng(), _cfg(1.5, 0.5))
    with pytest.raises(ConfigError, match="no prompt pool for degradation 'fog'"):
        P.make_prompt([rec("fog")], np.random.default_rng(), _cfg(0.0, 0.5))
