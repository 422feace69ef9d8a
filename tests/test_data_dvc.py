"""The committed data.dvc matches what `mmaif data build` produces here, byte for byte."""
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from mmaif_pl.data.synth import build

DVC = Path(sys.executable).with_name("dvc")


def test_fresh_build_matches_committed_data_dvc(tmp_path):
    repo = tmp_path.resolve()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    build(repo / "data", log=lambda *a, **k: None)
    subprocess.run([DVC, "add", "-q", "data"], cwd=repo, check=True)
    ours = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert (ours["md5"], ours["nfiles"], ours["size"]) == (committed["md5"], committed["nfiles"], committed["size"]), (
        "the embedded data differs from data.dvc: bump synth.VERSION, rebuild, `dvc add data`, commit data.dvc"
    )
