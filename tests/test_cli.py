"""The `mmaif` command: help with examples, data check output and exit codes, one-line errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_dataset
from mmaif_pl.cli import main

MMAIF = [str(Path(sys.executable).with_name("mmaif"))]


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "example:" in out


def test_data_check_on_embedded_default_ends_with_pair_count(embedded_data, capsys):
    assert main(["data", "check", str(embedded_data)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("27 pairs")


def test_data_check_fails_cleanly_on_empty_or_broken(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run(MMAIF + ["data", "check", str(tmp_path / "empty")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no known dataset layout" in r.stderr
    root = tmp_path / "vif"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    (root / "ir" / "1.png").write_bytes(b"")
    (root / "vi" / "1.png").write_bytes(b"junk")
    r = subprocess.run(MMAIF + ["data", "check", str(root)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "1.png" in r.stderr


def test_data_check_real_tno(capsys):
    root = shared_dataset("vif/TNO")
    assert main(["data", "check", str(root)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("25 pairs")
