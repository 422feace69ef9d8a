"""The whole DVC pipeline at smoke scale, in a throw-away git clone: `dvc repro` runs every stage, writes
finite metrics and the report; a second clone that pulls from the remote finds everything up to date."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


def _run(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _clone_worktree(dest: Path) -> None:
    """The repository's files as they are now (tracked + new, not ignored), in a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"]):
        subprocess.run(cmd, cwd=dest, check=True)


@pytest.mark.slow
def test_smoke_pipeline_reproduces_and_restores_from_remote(tmp_path):
    repo, remote, clone = tmp_path / "repo", tmp_path / "remote", tmp_path / "clone"
    repo.mkdir()
    _clone_worktree(repo)
    # Smoke scale, and a subset of the matrix (enough to exercise matrix and foreach stages) to keep CI short;
    # speed switches that a CPU accepts, to see them reach the commands.
    (repo / "params.yaml").write_text(
        "scale: smoke\ntrain_flags: --channels-last\nfuse_flags: --fast\n"
        "variants: [regression, flow, no-prompt]\nevaluations:\n"
        "  regression: {variant: regression, steps: 1, shifts: 1}\n  flow: {variant: flow, steps: 2, shifts: 2}\n"
        "  flow-s1: {variant: flow, steps: 1, shifts: 1}\n  no-prompt: {variant: no-prompt, steps: 1, shifts: 1}\n")
    assert "scale: cpu" in (REPO / "params.yaml").read_text()  # the real pipeline file is what we replaced
    _run(f"dvc remote add -f -d storage {remote} && mmaif data build --out data && dvc commit -q -f data.dvc", repo)
    log = _run("dvc repro 2>&1", repo)

    for variant in ("regression", "flow", "no-prompt"):  # train_flags reached every training command
        assert json.loads((repo / "runs" / variant / "train_summary.json").read_text())["channels_last"] is True
    assert log.count("note: --fast") == 4, log[-3000:]  # ... and fuse_flags each of the 4 fusing ones

    report = (repo / "reports" / "ablation.md").read_text()
    for name in ("regression", "flow", "flow-s1", "no-prompt", "baseline", "baseline-average"):
        assert f"`{name}`" in report
        summary = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert set(summary["per_task"]) == {"vif", "mef", "mff"}
        assert all(math.isfinite(v) for v in summary["overall"].values())
    assert "up to date" in _run("dvc status", repo)
    assert "metrics/regression.json" in _run("dvc metrics show", repo)

    # Push everything, then a fresh clone pulls it and has nothing to rerun.
    _run("git add -A && git -c user.name=t -c user.email=t@t commit -qm results && dvc push -q", repo)
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run("dvc pull -q", clone)
    assert "up to date" in _run("dvc status", clone)
    assert (clone / "runs" / "regression" / "checkpoints" / "last.ckpt").is_file()


def test_committed_dvc_lock_matches_the_code_and_params():
    """The committed results must be what HEAD's code and params produce: `dvc status` may report outputs
    that are not here (a fresh clone before `dvc pull`), never a modified code dependency or params."""
    out = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    stale = []
    for stage, changes in json.loads(out.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                stale.append(f"{stage}: {change}")  # e.g. "changed command"
                continue
            stale += [f"{stage}: {path} modified" for path, state in change.get("changed deps", {}).items()
                      if state == "modified"]
            if "changed params" in change:
                stale.append(f"{stage}: params {change['changed params']}")
    assert not stale, ("dvc.lock is stale, rerun the pipeline (`make ablation`) and commit dvc.lock, or "
                       "`dvc commit` stages whose outputs cannot change:\n" + "\n".join(stale))


def test_make_pull_names_a_remote_that_is_not_on_this_machine(tmp_path):
    """A fresh clone's default remote (a folder beside the repository) is not there: `make pull` says so and how to
    go on, instead of dvc's "Everything is up to date" followed by a failed checkout."""
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    os.utime(tmp_path / "pyproject.toml", (0, 0))  # older than .venv's stamp: make does not reinstall
    (tmp_path / ".venv").symlink_to(BIN.parent)
    _run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    _run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "no-such-storage")], tmp_path)
    r = subprocess.run(["make", "pull"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert r.returncode != 0
    assert f"the DVC remote {tmp_path / 'no-such-storage'} is not on this machine" in r.stdout, r.stdout + r.stderr
    assert "make ablation" in r.stdout
