import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("MMAIF_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_dataset(rel: str) -> Path:
    """A real benchmark sample folder, or a clean skip where it is absent (a fresh clone elsewhere)."""
    path = SHARED_DATASETS / rel
    if not path.is_dir():
        pytest.skip(f"real sample data not present: {path}")
    return path


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """A small embedded default dataset built by the project's own code (same generator, fewer pairs)."""
    from mmaif_pl.data.synth import build

    out = tmp_path_factory.mktemp("embedded") / "data"
    build(out, counts={"train": 6, "test": 3}, log=lambda *a, **k: None)
    return out
