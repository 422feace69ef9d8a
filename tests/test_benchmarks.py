"""The benchmark scripts run end to end (on the CPU, tiny settings) and write the JSON the docs describe, so
the GPU script that calls them (benchmarks/gpu_check.sh) does not find them broken on a lent machine."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def run(script: str, *args: str) -> str:
    res = launch(script, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_latency_writes_rows_and_profiles(tmp_path):
    out = run("latency.py", "--device", "cpu", "--size", "64", "160", "--tile", "128", "--variant", "regression",
              "flow", "--steps", "2", "--repeats", "1", "--warmup", "0", "--sparse-moe", "--profile", "5",
              "--json", str(tmp_path / "latency.json"))
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["fused_blocks"] is True and data["sparse_moe"] is True and data["weights"].startswith("random")
    rows = {(r["variant"], r["size"]): r for r in data["results"]}
    assert set(rows) == {("regression", 64), ("regression", 160), ("flow", 64), ("flow", 160)}
    assert rows[("regression", 160)]["tiles"] == 4 and rows[("regression", 64)]["tiles"] == 1  # 160 px: tiled
    for r in rows.values():
        assert r["ms"] >= r["dit_ms"] > 0 and r["baseline_ms"] > 0 and r["steps"] == (2 if r["variant"] == "flow" else 1)
    assert out.count("profile, 3 calls: wall") == 4 and "aten::" in out


def test_train_throughput_names_the_limit(tmp_path):
    out = run("train_throughput.py", "--device", "cpu", "--preset", "tiny", "--batch", "2", "--crop", "64",
              "--workers", "0", "--steps", "1", "--warmup", "0", "--profile", "5", "--channels-last",
              "--json", str(tmp_path / "t.json"), f"data.prepared={tmp_path / 'none'}")  # as on a fresh machine
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["channels_last"] is True and data["codec_bf16"] is False and data["adamw_fused"] is False  # CPU
    assert data["compile"] is None
    assert set(data["images_per_s"]) == {"data", "codec", "dit", "model", "train", "trainer"}
    assert re.search(r"mmaif train \(Lightning's loop\): [\d.]+ images/s", out)
    assert all(v > 0 for v in data["images_per_s"].values())
    assert data["batch"] == 2 and data["crop"] == 64 and data["limit"]
    printed = re.search(r"training throughput ([\d.]+) images/s", out)
    assert "profile, 3 calls: wall" in out and printed  # the printed rate is the JSON's, up to their roundings
    assert abs(float(printed.group(1)) - data["images_per_s"]["train"]) <= 0.051
    assert data["host_syncs_per_step"] == {}  # counted on a GPU only
    # the host's time per phase of steps taken one after the other: the DiT step alone, then the whole loop
    dit, train = data["phases"]["dit"], data["phases"]["train"]
    assert list(dit["host_ms_per_step"]) == ["latent_loss", "backward", "clip", "adamw", "ema"]
    assert list(train["host_ms_per_step"]) == ["loader", "to_device", "encode", "embed_text", "latent_loss",
                                               "backward", "clip", "adamw", "ema"]
    for phases in (dit, train):
        assert all(v >= 0 for v in phases["host_ms_per_step"].values()) and phases["images_per_s"] > 0
        assert sum(phases["host_ms_per_step"].values()) <= phases["host_ms"] * 1.01  # the phases lie within a step
    assert re.search(r"DiT step, host ms per step \(1 steps in a row.*latent_loss [\d.]+, backward", out)
    assert re.search(r"train, host ms per step .*loader [\d.]+, to_device [\d.]+, encode [\d.]+, embed_text", out)
    trainer = data["phases"]["trainer"]  # Lightning's loop, by its hooks
    assert list(trainer["host_ms_per_step"]) == ["between_steps", "training_step", "backward", "optimizer_and_hooks"]
    assert trainer["images_per_s"] == pytest.approx(data["images_per_s"]["trainer"], rel=0.01)
    assert re.search(r"mmaif train, host ms per step .*training_step [\d.]+, backward [\d.]+, optimizer_and_hooks", out)


def test_the_limit_is_the_loop_when_its_parts_are_fast_enough():
    """The H200's batch-128 rates of 2026-11-27 (loop 142 images/s, codec 3 045 and DiT step 408 alone): the
    limit was named the DiT step, while the loop ran at 40% of what its parts allow."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import name_limit

    assert name_limit(1347.8, 3044.9, 407.9, 142.4, 14).startswith("the loop, not a part: 142 img/s against the "
                                                                    "parts' ceiling of 360")
    assert name_limit(1347.8, 3044.9, 407.9, 350.0, 14) == "DiT step (88% of the model's time on the device)"
    assert name_limit(352.2, 1008.5, 8.4, 7.6, 1) == "DiT step (99% of the model's time on the device)"  # CPU
    assert name_limit(100.0, 3044.9, 407.9, 95.0, 2).startswith("data loader (2 workers: 100 img/s < model 360")
    assert name_limit(1347.8, 400.0, 3000.0, 350.0, 14) == "codec encoding (88% of the model's time on the device)"


def test_sync_sites_counts_synchronizing_calls_per_step_by_line(monkeypatch):
    """train_throughput's sync count: torch's sync debug mode on for the block only, its warnings counted per
    source line and divided by the steps; other warnings are not counted. (torch.cuda's switch is replaced: this
    machine has no GPU; the warning's text is torch's, from libc10_cuda.)"""
    import warnings

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import SYNC_WARNING, sync_report, sync_sites

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        warnings.warn(SYNC_WARNING)  # a read of a device value
        for _ in range(2):
            warnings.warn(SYNC_WARNING)  # a blocking copy in a loop
        warnings.warn("something else")

    with sync_sites(4) as sites:
        assert modes == ["warn"]
        for _ in range(4):
            step()
    assert modes == ["warn", "default"]
    line = step.__code__.co_firstlineno
    assert sites == {f"test_benchmarks.py:{line + 3}": 2.0, f"test_benchmarks.py:{line + 1}": 1.0}
    assert sync_report("train", sites) == (f"host syncs per step (train): 3 at test_benchmarks.py:{line + 3} (2), "
                                           f"test_benchmarks.py:{line + 1} (1)")
    with sync_sites(1, enabled=False) as sites:
        step()
    assert modes == ["warn", "default"] and sites == {f"test_benchmarks.py:{line + 3}": 2.0,
                                                      f"test_benchmarks.py:{line + 1}": 1.0}


def test_train_throughput_refuses_the_bf16_codec_on_the_cpu():
    res = launch("train_throughput.py", "--device", "cpu", "--codec-bf16")
    assert res.returncode == 2 and "--codec-bf16 runs the codec under bf16 autocast on a GPU" in res.stderr


def test_kernel_count_prints_both_variants():
    out = run("kernel_count.py", "--preset", "tiny", "--grid", "8", "--fused-blocks", "--top", "3")
    lines = [line for line in out.splitlines() if line.split()[:1] in (["regression"], ["flow"])]
    assert len(lines) == 2 and all(int(line.split()[1]) > 50 for line in lines)
    assert all(re.search(r"[\d.]+ GB = [\d.]+ ms at 4.8 TB/s", line) for line in lines)


def test_kernel_count_of_a_training_step():
    """Per phase; the EMA update is one multi-tensor lerp, not one kernel per parameter; AdamW is fused (a few
    launches, one pass over its tensors) and the matmul weights are cast in one multi-tensor copy, unless asked
    for the step as it was (multi-tensor AdamW, autocast's cast of each weight and of each gradient)."""
    phases = {}
    for adamw in ("fused", "foreach"):
        out = run("kernel_count.py", "--preset", "tiny", "--grid", "8", "--train", "--batch", "4",
                  *(["--foreach-adamw", "--per-weight-casts"] if adamw == "foreach" else []))
        rows = [line.split() for line in out.splitlines()
                if line.split()[:1] in (["forward"], ["backward"], ["clip"], ["adamw"], ["ema"])]
        phases[adamw] = {r[0]: (int(r[1]), float(r[3])) for r in rows}  # kernels, GB
        kernels = {k: v[0] for k, v in phases[adamw].items()}
        assert set(kernels) == {"forward", "backward", "clip", "adamw", "ema"}
        assert kernels["backward"] > kernels["forward"] > 100 and kernels["ema"] <= 2
        total = re.search(r"(\d+) kernels, ([\d.]+) GB", out.strip().splitlines()[-1])
        assert int(total.group(1)) == sum(kernels.values())
    assert phases["fused"]["adamw"][0] <= 4 < phases["foreach"]["adamw"][0] < 30
    assert phases["fused"]["adamw"][1] < 0.5 * phases["foreach"]["adamw"][1]
    # the tiny preset's DiT has 170 matmul weights and biases, which autocast casts as 106 tensors (each block's
    # MoE trains on its experts' weights concatenated into 4, models/layers.wide_swiglu): those casts each way
    # become 6 multi-tensor copies (the embedders, 4 blocks, the final layer)
    for phase in ("forward", "backward"):
        assert phases["foreach"][phase][0] - phases["fused"][phase][0] > 80, phases


def test_kernel_count_of_the_codec():
    """The GPU preset's codec: encoding a pair and decoding one, kernels and bytes; with its weights stored in bf16
    (accelerate's --codec-bf16 --bf16-weights) autocast's weight casts go, the bytes barely move."""
    parts = {}
    for weights in ("float32", "bf16"):
        out = run("kernel_count.py", "--codec", "--grid", "8", *(["--bf16-weights"] if weights == "bf16" else []))
        assert "codec tiny f8x16" in out and "64 px" in out
        parts[weights] = {line.split()[0]: (int(line.split()[1]), float(line.split()[3]))
                          for line in out.splitlines() if line.split()[:1] in (["encode"], ["decode"])}
    for part in ("encode", "decode"):
        (k32, gb32), (k16, gb16) = parts["float32"][part], parts["bf16"][part]
        assert k32 - k16 > 50 and k16 > 50 and gb16 <= gb32, parts  # 32 convolutions: 61 weight and bias casts


def test_kernel_count_bytes_are_the_tensors_each_kernel_reads_and_writes():
    """A GEMM moves its operands and its result, an in-place update reads and writes its tensor, a view moves
    nothing; fake tensors (how the script runs a B model at any size) count what real ones do."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from kernel_count import OpCounter, count
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mmaif_pl.config import load
    from mmaif_pl.models.dit import DiTSpec, FusionDiT

    x, w, b = torch.randn(8, 16), torch.randn(16, 32), torch.randn(32)
    with OpCounter() as counter:
        y = torch.addmm(b, x, w)
        y.mul_(2)
        y.t()
    assert counter.bytes == {"addmm": 4 * (32 + 8 * 16 + 16 * 32 + 8 * 32), "mul_": 2 * 4 * 8 * 32}
    assert counter.ops["t"] == 1 and "t" not in counter.bytes

    spec = DiTSpec.from_config(load([], ["model.preset=tiny"]).model)
    torch.manual_seed(0)
    dit = FusionDiT(16, 2, 384, spec, timestep=False).eval().requires_grad_(False)
    real = count(dit, 2, 8, 384, autocast=True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = count(dit, 2, 8, 384, autocast=True)
    for kind in real.bytes:
        assert (fake.ops[kind], fake.bytes[kind]) == (real.ops[kind], real.bytes[kind]), kind
    assert real.bytes["_to_copy"] > 0  # autocast's casts are counted


def test_flops_splits_the_dit_and_rates_a_measured_run(tmp_path):
    """CPU preset at 64 px (a 16 x 16 latent): the DiT's parts add up to its forward, the attention projections
    match 8 N D^2 per block, half the routed experts' work has zero combine weight (top 2 of 4), N flow steps
    cost N DiT passes, attention is 4 N^2 D per block, and measured milliseconds become TFLOP/s of the counted
    work."""
    from mmaif_pl import config
    from mmaif_pl.models.dit import DiTSpec

    cfg_files = ["-c", "experiments/base.yaml", "-c", "experiments/scale/cpu.yaml"]
    latency = {"patch_shifts": 1, "results": [
        {"variant": "regression", "size": 64, "steps": 1, "tiles": 1, "ms": 4.0, "encode_ms": 1.0, "dit_ms": 2.0,
         "decode_ms": 1.0},
        {"variant": "flow", "size": 64, "steps": 2, "tiles": 1, "ms": 6.0, "encode_ms": 1.0, "dit_ms": 4.0,
         "decode_ms": 1.0},
        {"variant": "flow", "size": 64, "steps": 2, "tiles": 4, "ms": 9.0, "encode_ms": 1.0, "dit_ms": 7.0,
         "decode_ms": 1.0}]}
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    (tmp_path / "throughput.json").write_text(json.dumps({"images_per_s": {"train": 10.0, "dit": 20.0, "trainer": 8.0},
                                                          "codec_fast_paths_images_per_s": {"float32": 50.0}}))
    out = run("flops.py", *cfg_files, "--size", "64", "--steps", "2", "--crop", "64", "--target-ms", "10", "20",
              "--latency", str(tmp_path / "latency.json"), "--throughput", str(tmp_path / "throughput.json"),
              "--json", str(tmp_path / "flops.json"))
    data = json.loads((tmp_path / "flops.json").read_text())
    spec = DiTSpec.from_config(config.load(["experiments/base.yaml", "experiments/scale/cpu.yaml"], []).model)
    counts = {c["variant"]: c for c in data["counts"]}
    assert set(counts) == {"regression", "flow"}
    for c in counts.values():
        assert c["latent"] == [16, 16] and c["encode"] > 0 and c["decode"] > 0
        assert sum(c["dit_parts"].values()) == pytest.approx(c["dit"], rel=1e-9)
        assert min(c["dit_parts"].values()) >= 0 and c["zero_weight_fraction"] == 0.5
        tokens = (16 // spec.patch) ** 2
        assert c["dit_parts"]["attention projections"] * 1e9 == pytest.approx(
            spec.depth * 8 * tokens * spec.hidden ** 2)
        assert c["dit_parts"]["attention scores and values"] * 1e9 == pytest.approx(
            spec.depth * 4 * tokens ** 2 * spec.hidden)  # Q K^T and P V
        assert c["dit_parts"]["MoE experts"] == pytest.approx(4 * c["dit_parts"]["MoE shared expert"])
    flow = counts["flow"]
    row = next(r for r in data["fusion"] if r["variant"] == "flow" and r["steps"] == 2)
    assert row["gflop"] == pytest.approx(flow["encode"] + 2 * flow["dit"] + flow["decode"], abs=0.1)
    assert row["peak_fraction_for_ms"]["10.0"] == pytest.approx(2 * row["peak_fraction_for_ms"]["20.0"], abs=2e-3)
    measured = {(r["variant"], r["steps"]): r for r in data["latency"]}
    assert set(measured) == {("regression", 1), ("flow", 2)}  # the tiled row is not compared
    assert measured[("flow", 2)]["dit_tflops"] == pytest.approx(2 * flow["dit"] / 4.0, abs=0.05)
    train = data["training"]
    assert train["images_encoded"] == 3  # a, b and the target; the clean pair only with the aux loss
    # backward: two products per forward one, less the input gradients nobody needs (latents, text)
    assert 2.8 * counts["regression"]["dit"] < train["dit_forward_backward"] <= 3 * counts["regression"]["dit"]
    assert train["measured"]["train"]["tflops"] == pytest.approx(10.0 * train["total"] / 1e3, abs=0.05)
    assert train["measured"]["trainer"]["tflops"] == pytest.approx(8.0 * train["total"] / 1e3, abs=0.05)
    assert train["measured"]["codec float32"]["tflops"] == pytest.approx(50.0 * train["encode"] / 1e3, abs=0.05)
    assert "on experts whose combine weight is zero" in out and "measured train" in out

    # a run of another codec layout is refused: its time would be rated against the wrong work
    latency["codec_layers_per_block"] = [0, 3, 3, 3]
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    res = launch("flops.py", *cfg_files, "--size", "64", "--latency", str(tmp_path / "latency.json"))
    assert res.returncode == 2 and "measured with codec_layers_per_block=[0, 3, 3, 3], counting 1" in res.stderr


def test_flops_counts_the_sparse_moe(tmp_path):
    """`--sparse-moe`: the MoE costs its top-k experts and the shared one, each padded to a multiple of 8 hidden
    units (CPU preset: 113 -> 120), instead of all experts; nothing else changes. A run measured with the
    sparse MoE is refused when the dense one is counted."""
    cfg_files = ["-c", "experiments/base.yaml", "-c", "experiments/scale/cpu.yaml", "--size", "64",
                 "--variant", "regression"]
    run("flops.py", *cfg_files, "--json", str(tmp_path / "dense.json"))
    out = run("flops.py", *cfg_files, "--sparse-moe", "--json", str(tmp_path / "sparse.json"))
    dense, sparse = (json.loads((tmp_path / f"{n}.json").read_text())["counts"][0] for n in ("dense", "sparse"))
    moe = dense["dit_parts"]["MoE experts"] + dense["dit_parts"]["MoE shared expert"]
    assert sparse["dit_parts"]["MoE experts"] == pytest.approx(moe * 3 / 5 * 120 / 113)
    assert sparse["dit"] == pytest.approx(dense["dit"] - moe + sparse["dit_parts"]["MoE experts"])
    assert sparse["encode"] == dense["encode"] and sparse["zero_weight_fraction"] == 0
    assert "each token's top-k experts and the shared one" in out

    (tmp_path / "latency.json").write_text(json.dumps({"sparse_moe": True, "results": []}))
    res = launch("flops.py", *cfg_files, "--latency", str(tmp_path / "latency.json"))
    assert res.returncode == 2 and "measured with sparse_moe=True, counting False" in res.stderr


def test_flops_counts_a_depthwise_convolutions_backward_as_two_forwards():
    """torch's formula ignores groups in the backward (a depthwise weight gradient counted as dense)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from flops import flops_by_module

    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    _, forward, _ = flops_by_module(lambda: conv(x))
    out = conv(x)
    _, both, _ = flops_by_module(lambda: out.sum().backward())
    assert forward == 2 * 2 * 16 * 16 * 64 * 9 and both == 2 * forward


def test_precision_cost_compares_each_precision_with_float32(tmp_path):
    """On a saved checkpoint and a split written by `mmaif data prepare`: a row per precision; the bf16 ones differ
    from float32 by a little (random weights here, trained ones in docs/speed.md), float32 has no row against itself."""
    from conftest import small_fusion_module, text_encoder

    from mmaif_pl.config import load
    from mmaif_pl.data.prepare import prepare
    from mmaif_pl.data.synth import build

    build(tmp_path / "data", counts={"train": 2, "test": 2}, log=lambda *a, **k: None)
    cfg = load([], [f"data.root={tmp_path / 'data'}", "data.eval_crop=32", "data.test_per_operator=1",
                    "data.test_combos=1", "data.test_clean=1"])
    prepare(cfg, tmp_path / "prepared", splits=("test",), log=lambda *a: None)
    m = small_fusion_module(["model.hidden=64", "model.depth=2", "model.heads=2", "model.pe_grid=8"], text_encoder())
    m.cfg.codec.path = str(tmp_path / "codec")
    m.codec.save(tmp_path / "codec")
    torch.save({"state_dict": m.state_dict(), "mmaif": m.checkpoint_meta()}, tmp_path / "m.ckpt")
    out = run("precision_cost.py", "--checkpoint", str(tmp_path / "m.ckpt"), "--prepared",
              str(tmp_path / "prepared" / "test"), "--pairs", "3", "--json", str(tmp_path / "p.json"))
    data = json.loads((tmp_path / "p.json").read_text())
    rows = {r["precision"]: r for r in data["results"]}
    assert data["pairs"] == 3 and set(rows) == {"float32", "bf16 autocast", "bf16 DiT"}
    assert rows["float32"]["psnr_to_float32_median"] is None and rows["float32"]["psnr_to_target_mean"] > 5
    for name in ("bf16 autocast", "bf16 DiT"):
        assert 30 < rows[name]["psnr_to_float32_min"] <= rows[name]["psnr_to_float32_median"] < 100, rows[name]
        assert abs(rows[name]["psnr_to_target_mean"] - rows["float32"]["psnr_to_target_mean"]) < 0.5
    assert "bf16 DiT" in out
    res = launch("precision_cost.py", "--prepared", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "nowhere/index.json not found" in res.stderr


def test_data_throughput_writes_the_per_core_rate(tmp_path):
    """The GPU script's `data` step: one worker's samples per second on generated sources of --size."""
    out = run("data_throughput.py", "--size", "272", "--samples", "6", "--repeats", "1",
              "--json", str(tmp_path / "d.json"))
    res = json.loads((tmp_path / "d.json").read_text())
    rate = res["samples_per_second_per_core"]
    printed = re.search(r"median ([\d.]+)", out)
    assert rate > 0 and printed and abs(float(printed.group(1)) - rate) <= 0.051  # 1 and 2 decimals
    # the same samples with OpenCV's default pool, as forked workers made them before: its rate and CPU cost
    assert res["opencv_pool"]["threads"] >= 1 and res["opencv_pool"]["samples_per_second"] > 0
    assert res["cpu_ms_per_sample"] > 0 and res["opencv_pool"]["cpu_ms_per_sample"] > 0
    assert f"with OpenCV's pool of {res['opencv_pool']['threads']} threads" in out


def test_prompt_cache_counts_distinct_prompts_and_hit_rates(tmp_path):
    """The measurement behind models/text.CACHE_SIZE: distinct prompts at each doubling, the LRU hit rate per size
    (never above the unbounded one, growing with the size) and the bytes per entry."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from prompt_cache import lru_hit_rate

    assert lru_hit_rate(["a", "b", "a", "c", "b", "a"], None) == pytest.approx(3 / 6)
    assert lru_hit_rate(["a", "b", "a", "c", "b", "a"], 2) == pytest.approx(1 / 6)  # only the first "a" again
    out = run("prompt_cache.py", "--samples", "3000", "--sizes", "64", "1024", "--json", str(tmp_path / "p.json"))
    res = json.loads((tmp_path / "p.json").read_text())
    distinct = list(res["distinct_after"].values())
    assert list(res["distinct_after"]) == ["1000", "2000", "3000"] and distinct == sorted(distinct)
    assert 0 < distinct[-1] < 3000
    rates = res["hit_rate"]
    assert 0 < rates["64"] <= rates["1024"] <= rates["unbounded"] < 1
    assert 10_000 < res["bytes_per_entry"] < 100_000 and "bytes per cached prompt" in out


def test_discovery_times_every_layout_and_checks_the_pairs_found(tmp_path):
    out = run("discovery.py", "--pairs", "30", "--repeats", "1", "--json", str(tmp_path / "d.json"))
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["pairs"] == 30 and set(res["seconds"]) == {"flat", "scenes", "ir_vi", "generic"}
    assert all(s > 0 for s in res["seconds"].values()) and "30 pairs" in out


def test_text_encoder_times_the_parts_of_a_real_call():
    """The parts add up to the whole call, which went through the encoder's own code (the prompts are cached
    after it) and left the encoder as it was; the script prints every condition and the profile."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from text_encoder import parts_of_one_call

    from mmaif_pl.models.text import TextEncoder

    te = TextEncoder()
    prompts = ["Remove the haze from the visible image.", "Fuse.", "Remove the haze from the visible image."]
    parts = parts_of_one_call(te, prompts, torch.device("cpu"))
    assert list(parts) == ["tokenize", "encoder", "cache_fill", "assemble_and_copy", "all"]
    assert all(v >= 0 for v in parts.values()) and parts["encoder"] > 0
    assert sum(v for k, v in parts.items() if k != "all") == pytest.approx(parts["all"])
    assert set(te._cache) == set(prompts)
    assert "_run_encoder" not in vars(te) and "_encode_new" not in vars(te) and callable(te.tokenizer.encode)
    out = run("text_encoder.py", "--batch", "8", "--repeats", "1", "--busy", "1", "--profile", "5")
    for cond in ("cores idle", "cores busy"):
        threads = re.findall(rf"{cond}, (\d+) threads: host ms tokenize", out)
        assert len(threads) == 2 and threads[1] == "1", out  # the default number of threads, then one
    assert "CPU profile of one call" in out
