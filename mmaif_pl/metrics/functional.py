"""Fusion metrics as pure torch functions.

Every function takes single-channel images as float64 tensors of shape BxHxW on the 0-255 scale (the
channel conversion, rounding and range belong to the profile, see `profiles.py`) and returns one value
per image, a tensor of shape B. F is the fused image, A and B the sources, M x N the image size.
Definitions follow ../shared/reference/fusion_field.md section 2; where the field's evaluators disagree,
the choice is an argument and the profiles name it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.fft import next_fast_len

Tensor = torch.Tensor
LEVELS = 256  # histogram bins of 8-bit images
# On CPU, filters run in scipy.ndimage (~8x faster than torch's float64 conv2d, which has no MKL-DNN path);
# on an accelerator they run as conv2d where the data is. Tests switch this off to check the torch path.
SCIPY_ON_CPU = True
MATLAB_EPS = 2.220446049250313e-16


# ----------------------------------------------------------------------------------------------------
# Filtering helpers (separable, float64; `valid` = MATLAB filter2(..., 'valid'))
# ----------------------------------------------------------------------------------------------------


def gaussian_1d(size: int, sigma: float, like: Tensor, normalize: bool = True) -> Tensor:
    """Samples of exp(-x^2 / 2 sigma^2) at x = -(size-1)/2 .. (size-1)/2 (MATLAB fspecial's grid)."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum() if normalize else g / math.sqrt(2 * math.pi * sigma * sigma)


def filter_valid(x: Tensor, kernel_1d: Tensor) -> Tensor:
    """Correlate BxHxW images with the separable kernel k k^T, keeping only the fully covered pixels."""
    r = kernel_1d.numel() // 2
    return _separable(x, kernel_1d, "constant")[:, r:x.shape[1] - r, r:x.shape[2] - r]


def filter_same_zero(x: Tensor, kernel_1d: Tensor) -> Tensor:
    """Same size output, zeros outside the image (MATLAB filter2(..., 'same'))."""
    return _separable(x, kernel_1d, "constant")


def _separable(x: Tensor, kernel_1d: Tensor, mode: str) -> Tensor:
    if _scipy(x):
        k = kernel_1d.numpy()
        y = ndimage.correlate1d(x.numpy(), k, axis=2, mode=mode)
        return torch.from_numpy(ndimage.correlate1d(y, k, axis=1, mode=mode))
    n = kernel_1d.numel()
    y = F.conv2d(F.pad(x.unsqueeze(1), (n // 2, n // 2, n // 2, n // 2)), kernel_1d.view(1, 1, 1, n))
    return F.conv2d(y, kernel_1d.view(1, 1, n, 1)).squeeze(1)


def box_valid(x: Tensor, size: int) -> Tensor:
    """Mean over every fully covered size x size window."""
    if _scipy(x):
        r = size // 2  # odd sizes: the centred window covers [i - r, i + r]
        y = ndimage.uniform_filter1d(ndimage.uniform_filter1d(x.numpy(), size, axis=2), size, axis=1)
        return torch.from_numpy(y[:, r:x.shape[1] - r, r:x.shape[2] - r].copy())
    return F.avg_pool2d(x.unsqueeze(1), size, stride=1).squeeze(1)


def _scipy(x: Tensor) -> bool:
    return SCIPY_ON_CPU and x.device.type == "cpu"


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return num / torch.where(den == 0, torch.ones_like(den), den)


# ----------------------------------------------------------------------------------------------------
# Statistics of the fused image alone
# ----------------------------------------------------------------------------------------------------


def _levels(x: Tensor) -> Tensor:
    """Histogram bin of each pixel: round to the nearest of 0..255 (CDDFuse np.round, MATLAB uint8())."""
    return x.round().clamp(0, LEVELS - 1).long()


def entropy(x: Tensor, base: float = 2.0) -> Tensor:
    """EN = -sum_l p_l log(p_l), p_l the normalised 256-bin histogram of round(F).

    Bits with base 2 (every reference evaluator). A constant image has EN = 0, a uniform ramp over all 256
    levels EN = 8 bits.
    """
    bsz = x.shape[0]
    idx = _levels(x).reshape(bsz, -1) + torch.arange(bsz, device=x.device).unsqueeze(1) * LEVELS
    hist = torch.bincount(idx.flatten(), minlength=bsz * LEVELS).reshape(bsz, LEVELS).to(x.dtype)
    p = hist / hist.sum(1, keepdim=True)
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return -plogp.sum(1) / math.log(base)


def standard_deviation(x: Tensor) -> Tensor:
    """SD = sqrt( (1/MN) sum (F - mean F)^2 ), the population standard deviation."""
    return x.flatten(1).std(dim=1, unbiased=False)


def spatial_frequency(x: Tensor, normalization: str = "differences") -> Tensor:
    """SF = sqrt(RF^2 + CF^2) with RF^2 = sum_{i,j>=2} (F_ij - F_i,j-1)^2 / D and CF^2 likewise vertically.

    normalization "differences": D = number of differences, M(N-1) and (M-1)N (Tang, CDDFuse);
    "pixels": D = MN for both (VIFB metricsSpatial_frequency.m).
    """
    dx = (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1)
    dy = (x[:, 1:, :] - x[:, :-1, :]).pow(2).flatten(1)
    if normalization == "differences":
        rf, cf = dx.mean(1), dy.mean(1)
    elif normalization == "pixels":
        mn = x.shape[1] * x.shape[2]
        rf, cf = dx.sum(1) / mn, dy.sum(1) / mn
    else:
        raise ValueError(f"unknown SF normalization {normalization!r}: use 'differences' or 'pixels'")
    return torch.sqrt(rf + cf)


def matlab_gradient(x: Tensor) -> tuple[Tensor, Tensor]:
    """MATLAB gradient(): central differences inside, one-sided differences on the borders."""
    gx = torch.empty_like(x)
    gy = torch.empty_like(x)
    gx[:, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) / 2
    gx[:, :, 0] = x[:, :, 1] - x[:, :, 0]
    gx[:, :, -1] = x[:, :, -1] - x[:, :, -2]
    gy[:, 1:-1, :] = (x[:, 2:, :] - x[:, :-2, :]) / 2
    gy[:, 0, :] = x[:, 1, :] - x[:, 0, :]
    gy[:, -1, :] = x[:, -1, :] - x[:, -2, :]
    return gx, gy


def average_gradient(x: Tensor, normalization: str = "interior") -> Tensor:
    """AG = (1/D) sum_ij sqrt((Gx^2 + Gy^2) / 2), Gx, Gy from MATLAB gradient() (sum over all MN pixels).

    normalization "interior": D = (M-1)(N-1) (VIFB metricsAvg_gradient.m, Tang AG_evaluation.m);
    "pixels": D = MN, i.e. the mean (CDDFuse Evaluator.AG).
    """
    gx, gy = matlab_gradient(x)
    s = torch.sqrt((gx * gx + gy * gy) / 2).flatten(1).sum(1)
    m, n = x.shape[1], x.shape[2]
    if normalization == "interior":
        return s / ((m - 1) * (n - 1))
    if normalization == "pixels":
        return s / (m * n)
    raise ValueError(f"unknown AG normalization {normalization!r}: use 'interior' or 'pixels'")


def grid_artifact_ratio(x: Tensor, period: int = 8) -> Tensor:
    """BLK = (mean |step| across the lines of a period-p grid) / (mean |step| over all neighbour pairs).

    Steps are differences of neighbouring pixels; grid lines lie between pixels p k - 1 and p k (k >= 1).
    Computed for rows and for columns and averaged over the directions that vary. 1 when the grid lines are
    like the rest of the image; up to about p when all change happens on them (a block pattern on that grid:
    a patch-based model's token borders, patch x codec factor pixels; JPEG's 8 x 8 blocks). NaN for a
    constant image or one without a grid line. A diagnostic of this project, not a metric from the fusion
    literature (docs/metrics.md).
    """
    if period < 2:
        raise ValueError(f"grid period must be >= 2, got {period}")
    ratios = []
    for steps in ((x[:, :, 1:] - x[:, :, :-1]).abs().mean(1), (x[:, 1:, :] - x[:, :-1, :]).abs().mean(2)):
        on_line = torch.arange(steps.shape[1], device=x.device) % period == period - 1
        ratios.append(steps[:, on_line].mean(1) / steps.mean(1))  # 0 / 0 (no variation): NaN, skipped below
    return torch.stack(ratios).nanmean(0)


# ----------------------------------------------------------------------------------------------------
# Information and correlation between F and the sources
# ----------------------------------------------------------------------------------------------------


def mutual_information(x: Tensor, y: Tensor, base: float = 2.0) -> Tensor:
    """MI(X,Y) = sum_{u,v} p(u,v) log( p(u,v) / (p(u) p(v)) ) from the 256x256 joint histogram of round(X), round(Y).

    Equal to H(X) + H(Y) - H(X,Y); MI(X,X) = EN(X). Base 2 gives bits (Tang), base e nats (sklearn's
    mutual_info_score, hence CDDFuse, and VIFB): nats = bits x ln 2.
    """
    bsz = x.shape[0]
    joint_idx = _levels(x).reshape(bsz, -1) * LEVELS + _levels(y).reshape(bsz, -1)
    joint_idx = joint_idx + torch.arange(bsz, device=x.device).unsqueeze(1) * LEVELS * LEVELS
    joint = torch.bincount(joint_idx.flatten(), minlength=bsz * LEVELS * LEVELS)
    pxy = joint.reshape(bsz, LEVELS, LEVELS).to(x.dtype)
    pxy = pxy / pxy.sum((1, 2), keepdim=True)
    px = pxy.sum(2, keepdim=True)
    py = pxy.sum(1, keepdim=True)
    ratio = _safe_div(pxy, px * py)
    terms = torch.where(pxy > 0, pxy * torch.log(torch.where(pxy > 0, ratio, torch.ones_like(ratio))), torch.zeros_like(pxy))
    return terms.sum((1, 2)) / math.log(base)


def fusion_mutual_information(f: Tensor, a: Tensor, b: Tensor, base: float = 2.0) -> Tensor:
    """MI = MI(A,F) + MI(B,F)."""
    return mutual_information(a, f, base) + mutual_information(b, f, base)


def correlation(x: Tensor, y: Tensor) -> Tensor:
    """Pearson r = sum (X - mean X)(Y - mean Y) / sqrt( sum (X - mean X)^2 sum (Y - mean Y)^2 ) (MATLAB corr2)."""
    xc = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    yc = y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
    return (xc * yc).sum(1) / torch.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))


def correlation_coefficient(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC = (r(A,F) + r(B,F)) / 2 (without Tang's CC_evaluation.m bug, which uses mean(A) in r(B,F))."""
    return (correlation(a, f) + correlation(b, f)) / 2


def sum_of_correlations_of_differences(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD = r(F - B, A) + r(F - A, B) (Aslantas and Bendes 2015): how much of each source F adds to the other.

    Average fusion F = (A + B)/2 gives F - B = (A - B)/2, so SCD = r(A-B, A) + r(B-A, B), positive for
    sources that differ; SCD is negative when F carries the opposite of the sources' differences.
    """
    return correlation(f - b, a) + correlation(f - a, b)


# ----------------------------------------------------------------------------------------------------
# Edge preservation: Qabf (Xydeas and Petrovic) and Nabf (artifacts, Shreyamsha Kumar)
# ----------------------------------------------------------------------------------------------------

_SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))  # h1 in the reference code
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))  # h3


def _correlate3(x: Tensor, kernel: tuple, pad_mode: str, scale: float = 1.0) -> Tensor:
    """3x3 correlation, same size; pad_mode "zeros" (filter2 'same') or "reflect" (mirror without the edge)."""
    k = torch.tensor(kernel, dtype=x.dtype) * scale
    if _scipy(x):
        mode = "constant" if pad_mode == "zeros" else "mirror"  # scipy's 'mirror' = torch's 'reflect'
        return torch.from_numpy(ndimage.correlate(x.numpy(), k.numpy()[None], mode=mode))
    xp = F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="constant" if pad_mode == "zeros" else pad_mode)
    return F.conv2d(xp, k.to(x.device).view(1, 1, 3, 3)).squeeze(1)


def _qabf_edges(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel strength g = sqrt(Sx^2 + Sy^2) and orientation alpha = atan(Sy / Sx), pi/2 where Sx = 0.

    Zero padding ('same'), as conv2/filter2 in all three reference codebases; a 180-degree flip of the
    kernels (convolution vs correlation) negates Sx and Sy together and leaves g and alpha unchanged.
    """
    sx = _correlate3(x, _SOBEL_X, "zeros")
    sy = _correlate3(x, _SOBEL_Y, "zeros")
    g = torch.sqrt(sx * sx + sy * sy)
    alpha = torch.where(sx == 0, torch.full_like(sx, math.pi / 2), torch.atan(sy / torch.where(sx == 0, torch.ones_like(sx), sx)))
    return g, alpha


def _qabf_preservation(g_src: Tensor, a_src: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    """Q_XF = Qg * Qa with Qg = 0.9994 / (1 + exp(-15 (G - 0.5))), Qa = 0.9879 / (1 + exp(-22 (A - 0.8))).

    G = g_F/g_X if g_X > g_F, g_X/g_F if g_X < g_F and, reproducing the reference code, g_F if equal;
    A = 1 - |alpha_X - alpha_F| / (pi/2).
    """
    rel_g = torch.where(
        g_src > g_f, g_f / torch.where(g_src > g_f, g_src, torch.ones_like(g_src)),
        torch.where(g_src < g_f, g_src / torch.where(g_src < g_f, g_f, torch.ones_like(g_f)), g_f),
    )
    rel_a = 1 - (a_src - a_f).abs() / (math.pi / 2)
    q_g = 0.9994 / (1 + torch.exp(-15.0 * (rel_g - 0.5)))
    q_a = 0.9879 / (1 + torch.exp(-22.0 * (rel_a - 0.8)))
    return q_g * q_a


def qabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qabf = sum(Q_AF w_A + Q_BF w_B) / sum(w_A + w_B), w = g (L = 1). In [0, ~0.975]; higher is better.

    Constants of VIFB metricsQabf.m, Tang analysis_Qabf.m and CDDFuse Evaluator.Qabf (identical).
    """
    g_a, al_a = _qabf_edges(a)
    g_b, al_b = _qabf_edges(b)
    g_f, al_f = _qabf_edges(f)
    q_af = _qabf_preservation(g_a, al_a, g_f, al_f)
    q_bf = _qabf_preservation(g_b, al_b, g_f, al_f)
    return (q_af * g_a + q_bf * g_b).flatten(1).sum(1) / (g_a + g_b).flatten(1).sum(1)


def _nabf_edges(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel/8 responses with mirror extension (per_extn_im_fn = reflect padding); alpha = atan(gv/gh), 0 where both vanish."""
    gv = _correlate3(x, _SOBEL_X, "reflect", 1 / 8)
    gh = _correlate3(x, tuple(tuple(-v for v in row) for row in _SOBEL_Y), "reflect", 1 / 8)
    g = torch.sqrt(gv * gv + gh * gh)
    both_zero = (gv == 0) & (gh == 0)
    alpha = torch.where(both_zero, torch.zeros_like(gv), torch.atan(gv / torch.where(both_zero, torch.ones_like(gh), gh)))
    return g, alpha


def nabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Nabf = sum na ((1 - Q_AF) w_A + (1 - Q_BF) w_B) / sum (w_A + w_B); artifacts, lower is better.

    Tang analysis_nabf.m (Petrovic, modified by Shreyamsha Kumar): na = 1 where g_F > g_A and g_F > g_B;
    Q_XF = sqrt(Qg Qa), Qg = 0.9999 / (1 + exp(-19 (G - 0.5))), Qa = 0.9995 / (1 + exp(-22 (A - 0.5))),
    G = min(g_X, g_F)/max(g_X, g_F) (0 if either is 0), A = | |alpha_X - alpha_F| - pi/2 | 2/pi;
    w = g^1.5 where g >= 2, else 0.001.
    """
    g_a, al_a = _nabf_edges(a)
    g_b, al_b = _nabf_edges(b)
    g_f, al_f = _nabf_edges(f)

    def preservation(g_x: Tensor, al_x: Tensor) -> Tensor:
        lo, hi = torch.minimum(g_x, g_f), torch.maximum(g_x, g_f)
        rel_g = torch.where((g_x == 0) | (g_f == 0), torch.zeros_like(g_x), lo / torch.where(hi == 0, torch.ones_like(hi), hi))
        rel_a = ((al_x - al_f).abs() - math.pi / 2).abs() * 2 / math.pi
        q_g = 0.9999 / (1 + torch.exp(-19.0 * (rel_g - 0.5)))
        q_a = 0.9995 / (1 + torch.exp(-22.0 * (rel_a - 0.5)))
        return torch.sqrt(q_g * q_a)

    def weight(g_x: Tensor) -> Tensor:
        return torch.where(g_x >= 2, g_x.pow(1.5), torch.full_like(g_x, 0.001))

    w_a, w_b = weight(g_a), weight(g_b)
    na = ((g_f > g_a) & (g_f > g_b)).to(f.dtype)
    num = (na * ((1 - preservation(g_a, al_a)) * w_a + (1 - preservation(g_b, al_b)) * w_b)).flatten(1).sum(1)
    return num / (w_a + w_b).flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------------
# VIF (pixel domain), SSIM family
# ----------------------------------------------------------------------------------------------------

VIF_MIN_SIZE = 41  # four 'valid' scales with 17, 9, 5, 3 windows and three halvings


def vifp(ref: Tensor, dist: Tensor, sigma_n_sq: float = 2.0) -> Tensor:
    """Pixel-domain VIF (Sheikh and Bovik; LIVE vifvec / torchmetrics / CDDFuse compare_viff), on 0-255.

    For scales s = 1..4: window N = 2^(5-s) + 1, Gaussian sigma = N/5; for s > 1 filter ('valid') and keep
    every second pixel; local mu, sigma^2 with 'valid' filtering; g = s_rd / (s_r^2 + 1e-10),
    sv^2 = s_d^2 - g s_rd, with g = 0 where s_r^2 < 1e-10 (sv^2 = s_d^2), g = sv^2 = 0 where s_d^2 < 1e-10,
    sv^2 = s_d^2 and g = 0 where g < 0, sv^2 >= 1e-10;
    num += sum log10(1 + g^2 s_r^2 / (sv^2 + sigma_n^2)), den += sum log10(1 + s_r^2 / sigma_n^2), sigma_n^2 = 2.
    vifp = num / den (1 when den = 0, as CDDFuse); NaN for images smaller than 41 x 41.
    """
    if min(ref.shape[-2:]) < VIF_MIN_SIZE:
        return torch.full(ref.shape[:1], float("nan"), dtype=ref.dtype, device=ref.device)
    # `ref` may hold K references per distorted image (K*B images): the statistics of `dist` are shared.
    reps = ref.shape[0] // dist.shape[0]

    def tile(t: Tensor) -> Tensor:
        return t.repeat(reps, 1, 1) if reps > 1 else t

    eps = 1e-10
    num = torch.zeros(ref.shape[0], dtype=ref.dtype, device=ref.device)
    den = torch.zeros_like(num)
    r, d = ref, dist
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        k = gaussian_1d(n, n / 5.0, ref)
        if scale > 0:
            r = filter_valid(r, k)[:, ::2, ::2]
            d = filter_valid(d, k)[:, ::2, ::2]
        mu_r, mu_d = filter_valid(r, k), filter_valid(d, k)
        s_r = (filter_valid(r * r, k) - mu_r * mu_r).clamp(min=0)
        s_d = tile((filter_valid(d * d, k) - mu_d * mu_d).clamp(min=0))
        mu_d = tile(mu_d)
        s_rd = filter_valid(r * tile(d), k) - mu_r * mu_d
        g = s_rd / (s_r + eps)
        sv = s_d - g * s_rd
        flat_r = s_r < eps
        g = torch.where(flat_r, torch.zeros_like(g), g)
        sv = torch.where(flat_r, s_d, sv)
        s_r = torch.where(flat_r, torch.zeros_like(s_r), s_r)
        flat_d = s_d < eps
        g = torch.where(flat_d, torch.zeros_like(g), g)
        sv = torch.where(flat_d, torch.zeros_like(sv), sv)
        negative = g < 0
        sv = torch.where(negative, s_d, sv)
        g = torch.where(negative, torch.zeros_like(g), g)
        sv = sv.clamp(min=eps)
        num = num + torch.log10(1 + g * g * s_r / (sv + sigma_n_sq)).flatten(1).sum(1)
        den = den + torch.log10(1 + s_r / sigma_n_sq).flatten(1).sum(1)
    value = num / den
    return torch.where(torch.isnan(value), torch.ones_like(value), value)


def fusion_vif(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF of the VIF-fusion literature = vifp(A, F) + vifp(B, F) (Tang, CDDFuse); not MEFB's VIFF."""
    bsz = f.shape[0]
    both = vifp(torch.cat([a, b]), f)
    return both[:bsz] + both[bsz:]


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 255.0,
    window: str = "gaussian",
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    sample_covariance: bool = False,
) -> Tensor:
    """SSIM = mean over 'valid' windows of (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)).

    C1 = (k1 L)^2, C2 = (k2 L)^2, L = data_range. window "gaussian": win_size x win_size Gaussian of the
    given sigma (Wang et al.; skimage with gaussian_weights=True, use_sample_covariance=False; VIFB, 11 and
    1.5); "uniform": box window (skimage's default, 7 x 7, with the sample covariance factor NP/(NP-1) when
    sample_covariance). Several images y may share one x: pass y with K*B images.
    """
    if window == "gaussian":
        k = gaussian_1d(win_size, sigma, x)

        def filt(t: Tensor) -> Tensor:
            return filter_valid(t, k)
    elif window == "uniform":
        def filt(t: Tensor) -> Tensor:
            return box_valid(t, win_size)
    else:
        raise ValueError(f"unknown SSIM window {window!r}: use 'gaussian' or 'uniform'")
    reps = y.shape[0] // x.shape[0]

    def tile(t: Tensor) -> Tensor:
        return t.repeat(reps, 1, 1) if reps > 1 else t

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cov_norm = win_size**2 / (win_size**2 - 1) if sample_covariance else 1.0
    mu_x, mu_y = filt(x), filt(y)
    vx = tile(cov_norm * (filt(x * x) - mu_x * mu_x))
    mu_x = tile(mu_x)
    vy = cov_norm * (filt(y * y) - mu_y * mu_y)
    vxy = cov_norm * (filt(tile(x) * y) - mu_x * mu_y)
    s = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def fusion_ssim(f: Tensor, a: Tensor, b: Tensor, reduce: str = "sum", **ssim_kwargs) -> Tensor:
    """SSIM(F,A) + SSIM(F,B) (reduce "sum": VIFB, CDDFuse; range up to 2) or half of it ("mean": Tang)."""
    both = ssim(f, torch.cat([a, b]), **ssim_kwargs)
    total = both[: f.shape[0]] + both[f.shape[0]:]
    if reduce == "sum":
        return total
    if reduce == "mean":
        return total / 2
    raise ValueError(f"unknown SSIM reduction {reduce!r}: use 'sum' or 'mean'")


def psnr(x: Tensor, y: Tensor, data_range: float = 255.0) -> Tensor:
    """PSNR = 10 log10(L^2 / MSE(X, Y)), L = 255 (a true peak, not max(F) as CDDFuse's source PSNR)."""
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


# ----------------------------------------------------------------------------------------------------
# MEF-SSIM (Ma, Zeng, Wang 2015), as MEFB metricsMEF_SSIM.m -> mef_ms_ssim.m -> mef_ssim.m
# ----------------------------------------------------------------------------------------------------

MEF_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)


def mef_ssim_single_scale(f: Tensor, sources: list[Tensor], k: float = 0.03, win_size: int = 11) -> Tensor:
    """One scale of MEF-SSIM, vectorised from mef_ssim.m (the per-patch loops become window filters).

    Per 11x11 patch (box window for the structure, Gaussian sigma 1.5 for the SSIM statistics):
    c_k = ||x_k - mu_k|| + 0.001; R = ||sum_k (x_k - mu_k)|| / sum_k ||x_k - mu_k||; p = min(tan(pi R / 2), 10);
    w_k = (c_k / 11)^p normalised over k; desired patch r = sum_k w_k (x_k - mu_k) / c_k rescaled to norm max_k c_k;
    q = (2 s_rf + C) / (s_r^2 + s_f^2 + C), C = (0.03 * 255)^2, no luminance term. Result: mean of q.
    Every patch quantity is linear in the sources, so norms and Gaussian moments of r follow from the
    box and Gaussian (co)variances of the sources.
    """
    eps = MATLAB_EPS
    n_px = win_size * win_size
    g = gaussian_1d(win_size, 1.5, f)
    K = len(sources)
    mu = [box_valid(x, win_size) for x in sources]
    box_cov = [[None] * K for _ in range(K)]
    gau_cov = [[None] * K for _ in range(K)]
    gau_mu = [filter_valid(x, g) for x in sources]
    for i in range(K):
        for j in range(i, K):
            box_cov[i][j] = box_cov[j][i] = box_valid(sources[i] * sources[j], win_size) - mu[i] * mu[j]
            gau_cov[i][j] = gau_cov[j][i] = filter_valid(sources[i] * sources[j], g) - gau_mu[i] * gau_mu[j]
    norms = [torch.sqrt((n_px * box_cov[i][i]).clamp(min=0)) for i in range(K)]
    ed = [nrm + 0.001 for nrm in norms]
    total = sum(sources)
    mu_total = box_valid(total, win_size)
    numerator = torch.sqrt((n_px * (box_valid(total * total, win_size) - mu_total * mu_total)).clamp(min=0))
    consistency = (numerator + eps) / (sum(norms) + eps)
    consistency = torch.where(consistency > 1, torch.full_like(consistency, 1 - eps), consistency)
    consistency = torch.where(consistency < 0, torch.full_like(consistency, eps), consistency)
    p = torch.tan(math.pi / 2 * consistency).clamp(max=10)
    w = [(e / win_size).pow(p) + eps for e in ed]
    w_sum = sum(w)
    coef = [w[i] / w_sum / ed[i] for i in range(K)]  # r = sum_k coef_k (x_k - mu_k)
    r_norm_sq = n_px * sum(coef[i] * coef[j] * box_cov[i][j] for i in range(K) for j in range(K))
    r_norm = torch.sqrt(r_norm_sq.clamp(min=0))
    max_ed = torch.stack(ed).amax(0)
    scale = torch.where(r_norm > 0, max_ed / torch.where(r_norm > 0, r_norm, torch.ones_like(r_norm)), torch.ones_like(r_norm))
    mu_f = filter_valid(f, g)
    var_f = filter_valid(f * f, g) - mu_f * mu_f
    var_r = scale * scale * sum(coef[i] * coef[j] * gau_cov[i][j] for i in range(K) for j in range(K))
    cov_rf = scale * sum(coef[i] * (filter_valid(sources[i] * f, g) - gau_mu[i] * mu_f) for i in range(K))
    c = (k * 255) ** 2
    q = (2 * cov_rf + c) / (var_r + var_f + c)
    return q.flatten(1).mean(1)


def _halve_symmetric(x: Tensor) -> Tensor:
    """imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end)."""
    xp = F.pad(x.unsqueeze(1), (0, 1, 0, 1), mode="replicate")
    return F.avg_pool2d(xp, 2, stride=1)[:, :, ::2, ::2].squeeze(1)


def mef_ssim(f: Tensor, a: Tensor, b: Tensor, levels: int = 3) -> Tensor:
    """MEF-SSIM = prod_l Q_l^(w_l), w = (0.0448, 0.2856, 0.3001) normalised, Q_l the single-scale score at
    scale l (2x2 mean then halving between scales). NaN for images with min side / 2^(levels-1) < 11.
    Q_l < 0 (not seen in practice; MATLAB would go complex) is clamped to 0.
    """
    if min(f.shape[-2:]) / 2 ** (levels - 1) < 11:
        return torch.full(f.shape[:1], float("nan"), dtype=f.dtype, device=f.device)
    weights = torch.tensor(MEF_SSIM_WEIGHTS[:levels], dtype=f.dtype, device=f.device)
    weights = weights / weights.sum()
    out = torch.ones(f.shape[0], dtype=f.dtype, device=f.device)
    srcs = [a, b]
    for level in range(levels):
        q = mef_ssim_single_scale(f, srcs).clamp(min=0)
        out = out * q.pow(weights[level])
        if level < levels - 1:
            srcs = [_halve_symmetric(s) for s in srcs]
            f = _halve_symmetric(f)
    return out


# ----------------------------------------------------------------------------------------------------
# Qcb (Chen and Blum 2009), as MEFB metricsQcb.m (from Zheng Liu's metricChenBlum.m)
# ----------------------------------------------------------------------------------------------------


def normalize_min_max(x: Tensor) -> Tensor:
    """Liu's normalize1: min-max to 0..255 and round; left as is when the image is all zero or constant."""
    lo = x.flatten(1).amin(1).view(-1, 1, 1)
    hi = x.flatten(1).amax(1).view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, ((x - lo) / torch.where(span > 0, span, torch.ones_like(span)) * 255).round(), x)


def _csf_filter(h: int, w: int, like: Tensor) -> Tensor:
    """S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2), f0 = 15.3870, f1 = 1.3456, a = 0.7622, on freqspace scaled
    by N/30, M/30, laid out for an unshifted FFT (ifftshift of the centred grid)."""
    v = (torch.arange(h, dtype=like.dtype, device=like.device) - h // 2) / 15.0
    u = (torch.arange(w, dtype=like.dtype, device=like.device) - w // 2) / 15.0
    r = torch.sqrt(v.view(-1, 1) ** 2 + u.view(1, -1) ** 2)
    s = torch.exp(-((r / 15.3870) ** 2)) - 0.7622 * torch.exp(-((r / 1.3456) ** 2))
    return torch.fft.ifftshift(s)


def qcb(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qcb = mean( lambda_A Q_AF + lambda_B Q_BF ), higher is better.

    Each image is min-max normalised to 0..255, CSF-filtered in the frequency domain (complex result kept, as
    MATLAB does), then local contrast C = |(G2 * I) / (G4 * I) - 1| with 31x31 Gaussians (sigma 2 and 4,
    zero-padded 'same'); masked contrast C' = C^3 / (C^2 + 1e-4); Q_XF = min(C'_X, C'_F) / max(C'_X, C'_F);
    lambda_X = C'_X^2 / (C'_A^2 + C'_B^2). Where both values of a ratio are 0 (flat areas; NaN in MATLAB)
    Q_XF = 1 and lambda = 1/2.
    """
    h, w = f.shape[-2:]
    csf = _csf_filter(h, w, f)
    g2 = gaussian_1d(31, 2.0, f, normalize=False)
    g4 = gaussian_1d(31, 4.0, f, normalize=False)

    # The 31x31 zero-padded filtering runs as a linear convolution through the FFT (sizes padded past
    # H + 30, W + 30, so nothing wraps around); it takes the complex CSF output as it is.
    fh, fw = next_fast_len(h + 30), next_fast_len(w + 30)
    spectra = [torch.outer(torch.fft.fft(k, fh), torch.fft.fft(k, fw)) for k in (g2, g4)]

    def masked_contrast(x: Tensor) -> Tensor:
        filtered = torch.fft.ifft2(torch.fft.fft2(normalize_min_max(x)) * csf)
        padded = torch.fft.fft2(filtered, s=(fh, fw))
        s2, s4 = (torch.fft.ifft2(padded * k)[:, 15:15 + h, 15:15 + w] for k in spectra)
        c = (s2 / s4 - 1).abs()
        return c.pow(3) / (c.pow(2) + 1e-4)

    ca, cb, cf = masked_contrast(a), masked_contrast(b), masked_contrast(f)

    def preserved(cx: Tensor) -> Tensor:
        lo, hi = torch.minimum(cx, cf), torch.maximum(cx, cf)
        return torch.where(hi > 0, lo / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.ones_like(hi))

    energy = ca * ca + cb * cb
    lam_a = torch.where(energy > 0, ca * ca / torch.where(energy > 0, energy, torch.ones_like(energy)), torch.full_like(energy, 0.5))
    q = lam_a * preserved(ca) + (1 - lam_a) * preserved(cb)
    return q.flatten(1).mean(1)
