"""BT.601 luma, computed the same way on every CPU.

`img @ weights` hands the three-term sum to BLAS, whose kernel is chosen per CPU: OpenBLAS's Haswell kernel rounds
each product and each sum, its SkylakeX kernel fuses them into multiply-adds. The fused sums differ in the last bit,
a few pixels per image land on the other side of an 8-bit level, and the embedded dataset built on an AVX-512
machine no longer matched data.dvc. Plain array products and sums round once per operation everywhere.
"""
from __future__ import annotations

import numpy as np

BT601 = (0.299, 0.587, 0.114)  # R, G, B


def luma(img: np.ndarray, weights_dtype=np.float32) -> np.ndarray:
    """(0.299 R + 0.587 G) + 0.114 B of an H x W x 3 image, in the dtype `img @ np.array(BT601, weights_dtype)`
    gives, each product and sum rounded once. In float32 (the degradations, teachers and baselines) these are the
    bits `@` gave with OpenBLAS's Haswell kernel, which built data.dvc. Its float64 kernel fuses two of the
    multiply-adds, so in float64 (the embedded data's pseudo-thermal image) the last bit may differ from that
    kernel's; the data built from it still matches data.dvc (tests/test_data_dvc.py)."""
    dtype = np.result_type(img, np.dtype(weights_dtype))
    w = np.array(BT601, weights_dtype).astype(dtype)
    img = img.astype(dtype, copy=False)
    return (img[..., 0] * w[0] + img[..., 1] * w[1]) + img[..., 2] * w[2]


def is_gray(img: np.ndarray) -> bool:
    """True when the three channels of an H x W x 3 image are equal (a replicated gray image), up to 1e-5: OpenCV's
    vectorised float paths may differ per channel in the last bit; 8- and 16-bit files differ by 1.5e-5 at least."""
    return bool(np.abs(img[..., 0] - img[..., 1]).max() < 1e-5 and np.abs(img[..., 0] - img[..., 2]).max() < 1e-5)


def gray_of(img: np.ndarray) -> np.ndarray:
    """The luma of an H x W x 3 image in all three channels."""
    return np.repeat(luma(img)[..., None], 3, axis=2)
