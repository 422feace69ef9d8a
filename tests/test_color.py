"""luma: BT.601 luma with the same bits on every CPU (mmaif_pl/data/color.py).

The embedded dataset (data.dvc) was built where numpy's `img @ weights` ran OpenBLAS's Haswell kernel: one rounding
per product and per sum. OpenBLAS's AVX-512 kernel fuses them, and on such a CPU the build no longer matched
data.dvc (tests/test_data_dvc.py). In float32, where the degradations, teachers and baselines compute it, `luma` must give
the Haswell kernel's values.
"""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from mmaif_pl.data.color import BT601, luma

HASWELL_MATMUL = """
import sys, numpy as np
x = np.load(sys.argv[1])
np.save(sys.argv[2], x @ np.array([0.299, 0.587, 0.114], np.dtype(sys.argv[3])))
"""


def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((64, 96, 3))
    return {"float32": x.astype(np.float32), "8-bit float32": (np.round(x * 255) / 255).astype(np.float32),
            "uint8": np.round(x * 255).astype(np.uint8)}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS's Haswell kernel is x86-64 only")
def test_luma_gives_the_blas_haswell_kernels_bits_in_float32(tmp_path):
    for name, img in images().items():
        np.save(tmp_path / "x.npy", img)
        subprocess.run([sys.executable, "-c", HASWELL_MATMUL, tmp_path / "x.npy", tmp_path / "y.npy", "float32"],
                       check=True, env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"})
        ref = np.load(tmp_path / "y.npy")
        out = luma(img)
        assert out.dtype == ref.dtype and out.shape == img.shape[:2], name
        assert np.array_equal(out, ref), (name, int((out != ref).sum()))


def test_luma_is_the_bt601_weighting():
    img = np.zeros((1, 3, 3), np.float32)
    img[0, [0, 1, 2], [0, 1, 2]] = 1.0  # pure red, green, blue
    assert luma(img).tolist() == [[np.float32(w) for w in BT601]]
    gray = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(luma(gray), 0.5, rtol=1e-6)
    assert luma(gray.astype(np.float64), np.float64).dtype == np.float64  # the pseudo-thermal image's precision
