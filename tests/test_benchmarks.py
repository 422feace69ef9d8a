"""The benchmark scripts run end to end (on the CPU, tiny settings) and write the JSON the docs describe, so
the GPU script that calls them (benchmarks/gpu_check.sh) does not find them broken on a lent machine."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_latency_writes_rows_and_profiles(tmp_path):
    out = run("latency.py", "--device", "cpu", "--size", "64", "160", "--tile", "128", "--variant", "regression",
              "flow", "--steps", "2", "--repeats", "1", "--warmup", "0", "--fused-blocks", "--profile", "5",
              "--json", str(tmp_path / "latency.json"))
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["fused_blocks"] is True and data["weights"].startswith("random")
    rows = {(r["variant"], r["size"]): r for r in data["results"]}
    assert set(rows) == {("regression", 64), ("regression", 160), ("flow", 64), ("flow", 160)}
    assert rows[("regression", 160)]["tiles"] == 4 and rows[("regression", 64)]["tiles"] == 1  # 160 px: tiled
    for r in rows.values():
        assert r["ms"] >= r["dit_ms"] > 0 and r["baseline_ms"] > 0 and r["steps"] == (2 if r["variant"] == "flow" else 1)
    assert out.count("profile, 3 calls: wall") == 4 and "aten::" in out


def test_train_throughput_names_the_limit(tmp_path):
    out = run("train_throughput.py", "--device", "cpu", "--preset", "tiny", "--batch", "2", "--crop", "64",
              "--workers", "0", "--steps", "1", "--warmup", "0", "--profile", "5", "--json", str(tmp_path / "t.json"))
    data = json.loads((tmp_path / "t.json").read_text())
    assert set(data["images_per_s"]) == {"data", "codec", "dit", "model", "train"}
    assert all(v > 0 for v in data["images_per_s"].values())
    assert data["batch"] == 2 and data["crop"] == 64 and data["limit"]
    assert "profile, 3 calls: wall" in out and f"training throughput {data['images_per_s']['train']:.1f}" in out


def test_kernel_count_prints_both_variants():
    out = run("kernel_count.py", "--preset", "tiny", "--grid", "8", "--fused-blocks", "--top", "3")
    lines = [line for line in out.splitlines() if line.split()[:1] in (["regression"], ["flow"])]
    assert len(lines) == 2 and all(int(line.split()[1]) > 50 for line in lines)


def test_kernel_count_of_a_training_step():
    """Per phase; the EMA update is one multi-tensor lerp, not one kernel per parameter."""
    out = run("kernel_count.py", "--preset", "tiny", "--grid", "8", "--train")
    phases = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.split()[:1] in (["forward"], ["backward"], ["clip"], ["adamw"], ["ema"])}
    assert set(phases) == {"forward", "backward", "clip", "adamw", "ema"}
    assert phases["backward"] > phases["forward"] > 100 and phases["ema"] <= 2 and phases["adamw"] < 30
    total = int(out.strip().splitlines()[-1].split()[-2])
    assert total == sum(phases.values())
