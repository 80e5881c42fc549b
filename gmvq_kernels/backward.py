"""Backward kernels of the fused GM-VQ op: recompute, never store N×K (DESIGN.md §2).

Per (n, k) every kernel rebuilds d, ℓ, q = softmax(ℓ) and the soft sample y = softmax((ℓ + g)/τ) from
the forward's row statistics (each softmax's max m and log2-sum, exponents (e − m)·scale exactly as
the forward formed them), with the Gumbel noise g regenerated from its counters, then

    Y     = Ḡ_z·μ_k + Ḡ_s σ_k² + Ḡ_lat d a_k                   (only with Ḡ_z, Ḡ_s or Ḡ_lat)
    dℓ    = (y/τ)(Y − Δy) + q [Ḡ_lse + Ḡ_c[k] − Δq − Ḡ_H (log q + H)]
    w     = Ḡ_lat·y_val − dℓ,      dd = a_k·w  (0 where the distance clamp was active)

with Ḡ_c = Ḡ_q̄ / N the gradient of the column sum of q, and the row sums Δy = Σ_k y Y and
Δq = Σ_k q Ḡ_c[k] from ``_gmvq_bwd_delta_kernel`` (one pass: the analogue of FlashAttention's Delta).
Δy could come from the forward's soft sums, but then Y − Δy would mix two roundings and 1/τ amplifies
the mismatch (seen: 1e-5 relative error in dx at K = 1, τ = 0.1); recomputed, it cancels exactly.
y_val is y, or the one-hot hard sample in hard mode. Then (a, v as in reference.component_terms):

    dx_n = 2 (x_n Σ_k dd − Σ_k dd μ_k)                     ``_gmvq_bwd_dx_kernel``  (row blocks)
    dμ_k = 2 (μ_k Σ_n dd − Σ_n dd x_n) + Σ_n y_val Ḡ_z      ``_gmvq_bwd_dmu_kernel`` (column blocks ×
    dλ_k = Σ_n [dℓ (d a − D/2) − Ḡ_lat y_val d a + Ḡ_s y_val σ²]   row splits, partial sums added
    d(log π_k) = Σ_n dℓ                                              by torch; log_softmax's backward
                                                                     turns the last into dρ)

Absent upstream gradients are constexpr flags: their loads, dots and terms vanish from the kernels.
FLOPs, in units of N·K·D: delta 2 (+2 with Ḡ_z), dx 4 (+2 with Ḡ_z), dμ 4 (+4 with Ḡ_z).
"""
import torch
import triton
import triton.language as tl

from .config import block_d, col_config, row_config, split_rows
from .forward import (LN2, LOG2E, kernel_flags, log2_softmax, load_codes, load_rows, logits_tile, noise_tile, softmax_prob,
                      y_scale)
from .noise import split_seed


@triton.jit
def load_row_vec(ptr, offs_n, N, HAS: tl.constexpr):
    if HAS:
        return tl.load(ptr + offs_n, mask=offs_n < N, other=0.0)
    else:
        return tl.zeros(offs_n.shape, tl.float32)


@triton.jit
def load_row_grads(ent_ptr, delta_y_ptr, delta_q_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, hard_idx_ptr,
                   offs_n, N, HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr,
                   HAS_GLSE: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr, HARD: tl.constexpr):
    """The per-row vectors a backward tile needs (zeros for absent gradients; hard index −1 off-rows)."""
    ent = load_row_vec(ent_ptr, offs_n, N, HAS_GH)
    delta_y = load_row_vec(delta_y_ptr, offs_n, N, HAS_GZ or HAS_GLAT or HAS_GS)
    delta_q = load_row_vec(delta_q_ptr, offs_n, N, HAS_GC)
    g_lse = load_row_vec(glse_ptr, offs_n, N, HAS_GLSE)
    g_h = load_row_vec(gh_ptr, offs_n, N, HAS_GH)
    g_lat = load_row_vec(glat_ptr, offs_n, N, HAS_GLAT)
    g_s = load_row_vec(gs_ptr, offs_n, N, HAS_GS)
    hard_idx = tl.zeros(offs_n.shape, tl.int64)
    if HARD:
        hard_idx = tl.load(hard_idx_ptr + offs_n, mask=offs_n < N, other=-1)
    return ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s, hard_idx


@triton.jit
def sample_terms(logits, d, a, v, gz_mu, g, y_scale, stats_ptr, offs_n, N, g_lat, g_s,
                 HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr):
    """(y, Y): the soft sample, recomputed with the forward's exact exponent, and the upstream value
    Y = Ḡ_z·μ + Ḡ_s σ² + Ḡ_lat d a of each of its entries."""
    noisy = tl.where(logits > float("-inf"), logits + g, float("-inf"))
    y = softmax_prob(noisy, y_scale, stats_ptr, offs_n, N, 1)
    big_y = tl.zeros(logits.shape, tl.float32)
    if HAS_GZ:
        big_y += gz_mu
    if HAS_GS:
        big_y += g_s[:, None] * v[None, :]
    if HAS_GLAT:
        big_y += g_lat[:, None] * (d * a[None, :])
    return y, big_y


@triton.jit
def grad_logits_tile(logits, d, a, v, gz_mu, g, offs_k, inv_tau, y_scale, stats_ptr, offs_n, N,
                     ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s, g_c, hard_idx,
                     HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr,
                     HAS_GLSE: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr,
                     HARD: tl.constexpr):
    """(dℓ, w, y_val) of one tile, from the recomputed logits; see the module docstring."""
    valid = logits > float("-inf")
    log2_q = log2_softmax(logits, LOG2E, stats_ptr, offs_n, N, 0)
    q = tl.exp2(log2_q)
    dl = tl.zeros(logits.shape, tl.float32)
    y = tl.zeros(logits.shape, tl.float32)
    if HAS_GZ or HAS_GLAT or HAS_GS:
        y, big_y = sample_terms(logits, d, a, v, gz_mu, g, y_scale, stats_ptr, offs_n, N, g_lat, g_s,
                                HAS_GZ, HAS_GLAT, HAS_GS)
        dl += (y * inv_tau) * (big_y - delta_y[:, None])
    if HAS_GLSE:
        dl += q * g_lse[:, None]
    if HAS_GC:
        dl += q * (g_c[None, :] - delta_q[:, None])
    if HAS_GH:
        # log q in the forward's own terms: exactly 0 where q = 1 (e.g. K = 1), unlike ℓ − lse
        dl -= q * g_h[:, None] * tl.where(valid, log2_q * LN2 + ent[:, None], 0.0)
    if HARD:
        y_val = (offs_k[None, :] == hard_idx[:, None]).to(tl.float32)
    else:
        y_val = y
    w = -dl
    if HAS_GLAT:
        w += g_lat[:, None] * y_val
    return dl, w, y_val


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_dx_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, noise_ptr,
    ent_ptr, stats_ptr, delta_y_ptr, delta_q_ptr, hard_idx_ptr,
    gz_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, gc_ptr,
    dx_ptr,
    N, K, D, seed_lo, seed_hi, inv_tau, y_scale,
    HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr,
    HAS_GLSE: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr,
    HAS_NOISE: tl.constexpr, HARD: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    HAS_Y: tl.constexpr = HAS_GZ or HAS_GLAT or HAS_GS
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    x, xx = load_rows(x_ptr, offs_n, N, D, offs_d, UPCAST)
    gz = tl.zeros((BLOCK_N, BLOCK_D), x.dtype)
    if HAS_GZ:
        gz, _ = load_rows(gz_ptr, offs_n, N, D, offs_d, UPCAST)
    ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s, hard_idx = load_row_grads(
        ent_ptr, delta_y_ptr, delta_q_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, hard_idx_ptr, offs_n, N,
        HAS_GZ, HAS_GLAT, HAS_GS, HAS_GLSE, HAS_GH, HAS_GC, HARD)

    dd_sum = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mu, mm, a, b = load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST)
        d, logits, gmask = logits_tile(x, xx, mu, mm, a, b, mask_k, DOT_PRECISION)
        v = tl.load(v_ptr + offs_k, mask=mask_k, other=0.0)
        g_c = tl.zeros((BLOCK_K,), tl.float32)
        if HAS_GC:
            g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0)
        gz_mu = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if HAS_GZ:
            gz_mu = tl.dot(gz, tl.trans(mu), input_precision=DOT_PRECISION)
        g = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if HAS_Y:
            g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, HAS_NOISE, BLOCK_K)
        dl, w, y_val = grad_logits_tile(logits, d, a, v, gz_mu, g, offs_k, inv_tau, y_scale,
                                        stats_ptr, offs_n, N, ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s,
                                        g_c, hard_idx, HAS_GZ, HAS_GLAT, HAS_GS, HAS_GLSE, HAS_GH,
                                        HAS_GC, HARD)
        dd = tl.where(gmask & mask_k[None, :], w * a[None, :], 0.0)
        dd_sum += tl.sum(dd, axis=1)
        acc += tl.dot(dd.to(mu.dtype), mu, input_precision=DOT_PRECISION)

    dx = 2.0 * (x.to(tl.float32) * dd_sum[:, None] - acc)
    mask_nd = mask_n[:, None] & (offs_d[None, :] < D)
    tl.store(dx_ptr + offs_n[:, None] * D + offs_d[None, :], dx, mask=mask_nd)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_dmu_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, noise_ptr,
    ent_ptr, stats_ptr, delta_y_ptr, delta_q_ptr, hard_idx_ptr,
    gz_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, gc_ptr,
    dmu_part_ptr, dlv_part_ptr, dlp_part_ptr,
    N, K, D, half_d, seed_lo, seed_hi, inv_tau, y_scale, rows_per_split,
    HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr,
    HAS_GLSE: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr,
    HAS_NOISE: tl.constexpr, HARD: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    HAS_Y: tl.constexpr = HAS_GZ or HAS_GLAT or HAS_GS
    k_start = tl.program_id(0).to(tl.int64) * BLOCK_K
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    split = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mu, mm, a, b = load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST)
    v = tl.load(v_ptr + offs_k, mask=mask_k, other=0.0)
    g_c = tl.zeros((BLOCK_K,), tl.float32)
    if HAS_GC:
        g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0)

    acc_mu = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    acc_gz = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    dd_col = tl.zeros((BLOCK_K,), tl.float32)
    d_log_var = tl.zeros((BLOCK_K,), tl.float32)
    d_log_pi = tl.zeros((BLOCK_K,), tl.float32)
    row_lo = split * rows_per_split
    row_hi = tl.minimum(row_lo + rows_per_split, N)
    for n_start in range(row_lo, row_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < row_hi
        x, xx = load_rows(x_ptr, offs_n, row_hi, D, offs_d, UPCAST)
        d, logits, gmask = logits_tile(x, xx, mu, mm, a, b, mask_k, DOT_PRECISION)
        gz = tl.zeros((BLOCK_N, BLOCK_D), x.dtype)
        gz_mu = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if HAS_GZ:
            gz, _ = load_rows(gz_ptr, offs_n, row_hi, D, offs_d, UPCAST)
            gz_mu = tl.dot(gz, tl.trans(mu), input_precision=DOT_PRECISION)
        ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s, hard_idx = load_row_grads(
            ent_ptr, delta_y_ptr, delta_q_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, hard_idx_ptr, offs_n, row_hi,
            HAS_GZ, HAS_GLAT, HAS_GS, HAS_GLSE, HAS_GH, HAS_GC, HARD)
        g = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if HAS_Y:
            g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, HAS_NOISE, BLOCK_K)
        dl, w, y_val = grad_logits_tile(logits, d, a, v, gz_mu, g, offs_k, inv_tau, y_scale,
                                        stats_ptr, offs_n, N, ent, delta_y, delta_q, g_lse, g_h, g_lat, g_s,
                                        g_c, hard_idx, HAS_GZ, HAS_GLAT, HAS_GS, HAS_GLSE, HAS_GH,
                                        HAS_GC, HARD)
        rows = mask_n[:, None]
        dl = tl.where(rows, dl, 0.0)
        w = tl.where(rows, w, 0.0)
        dd = tl.where(gmask & rows & mask_k[None, :], w * a[None, :], 0.0)
        dd_col += tl.sum(dd, axis=0)
        acc_mu += tl.dot(tl.trans(dd.to(x.dtype)), x, input_precision=DOT_PRECISION)
        # ∂ℓ/∂λ = d·a − D/2 and ∂ℓ/∂log π = 1, summed per element (the cancellation of d·a against D/2
        # stays inside each term instead of between two large column sums)
        da_ = d * a[None, :]
        dlv = dl * (da_ - half_d)
        if HAS_GLAT:
            dlv -= g_lat[:, None] * y_val * da_
        if HAS_GS:
            dlv += g_s[:, None] * y_val * v[None, :]
        d_log_var += tl.sum(tl.where(rows, dlv, 0.0), axis=0)
        d_log_pi += tl.sum(dl, axis=0)
        if HAS_GZ:
            y_val = tl.where(rows, y_val, 0.0)
            acc_gz += tl.dot(tl.trans(y_val.to(gz.dtype)), gz, input_precision=DOT_PRECISION)

    dmu = 2.0 * (mu.to(tl.float32) * dd_col[:, None] - acc_mu) + acc_gz
    mask_kd = mask_k[:, None] & (offs_d[None, :] < D)
    tl.store(dmu_part_ptr + (split * K + offs_k[:, None]) * D + offs_d[None, :], dmu, mask=mask_kd)
    tl.store(dlv_part_ptr + split * K + offs_k, d_log_var, mask=mask_k)
    tl.store(dlp_part_ptr + split * K + offs_k, d_log_pi, mask=mask_k)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_delta_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, noise_ptr, stats_ptr,
    gz_ptr, glat_ptr, gs_ptr, gc_ptr, delta_y_ptr, delta_q_ptr,
    N, K, D, seed_lo, seed_hi, y_scale,
    HAS_GZ: tl.constexpr, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr, HAS_GC: tl.constexpr,
    HAS_NOISE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Δy = Σ_k y Y and Δq = Σ_k q Ḡ_c[k] per row. Launched with the dx kernel's blocks, so y and Y
    here are bitwise those of the dx kernel and Y − Δy cancels as exactly as in softmax's backward."""
    HAS_Y: tl.constexpr = HAS_GZ or HAS_GLAT or HAS_GS
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    x, xx = load_rows(x_ptr, offs_n, N, D, offs_d, UPCAST)
    gz = tl.zeros((BLOCK_N, BLOCK_D), x.dtype)
    if HAS_GZ:
        gz, _gz_sq = load_rows(gz_ptr, offs_n, N, D, offs_d, UPCAST)
    g_lat = load_row_vec(glat_ptr, offs_n, N, HAS_GLAT)
    g_s = load_row_vec(gs_ptr, offs_n, N, HAS_GS)
    delta_y = tl.zeros((BLOCK_N,), tl.float32)
    delta_q = tl.zeros((BLOCK_N,), tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mu, mm, a, b = load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST)
        d, logits, _clamp = logits_tile(x, xx, mu, mm, a, b, mask_k, DOT_PRECISION)
        if HAS_GC:
            g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0)
            q = softmax_prob(logits, LOG2E, stats_ptr, offs_n, N, 0)
            delta_q += tl.sum(q * g_c[None, :], axis=1)
        if HAS_Y:
            v = tl.load(v_ptr + offs_k, mask=mask_k, other=0.0)
            gz_mu = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            if HAS_GZ:
                gz_mu = tl.dot(gz, tl.trans(mu), input_precision=DOT_PRECISION)
            g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, HAS_NOISE, BLOCK_K)
            y, big_y = sample_terms(logits, d, a, v, gz_mu, g, y_scale, stats_ptr, offs_n, N, g_lat, g_s,
                                    HAS_GZ, HAS_GLAT, HAS_GS)
            delta_y += tl.sum(tl.where(mask_k[None, :], y * big_y, 0.0), axis=1)
    if HAS_Y:
        tl.store(delta_y_ptr + offs_n, delta_y, mask=mask_n)
    if HAS_GC:
        tl.store(delta_q_ptr + offs_n, delta_q, mask=mask_n)


def gmvq_bwd(x, means, a, b, v, noise, saved, grads, *, tau, hard, seed, dot_precision):
    """Gradients of the fused op. Inputs as for ``gmvq_fwd``; ``saved`` = (entropy, stats,
    hard_idx) from the forward; ``grads`` = (Ḡ_z (N, D), Ḡ_lse, Ḡ_q̄ (K,), Ḡ_lat, Ḡ_s2, Ḡ_H (N,)),
    each a tensor or None (a None removes its work from the kernels).

    Returns (dx (N, D) x.dtype, dmeans (K, D) means.dtype, d log_var (K,), d log π (K,) fp32)."""
    N, D = x.shape
    K = means.shape[0]
    dev = x.device
    ent, stats, hard_idx = saved
    g_z, g_lse, g_qbar, g_lat, g_s, g_h = grads
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    g_lse, g_lat, g_s, g_h = f32(g_lse), f32(g_lat), f32(g_s), f32(g_h)
    g_c = None if g_qbar is None else (g_qbar.float() / N).contiguous()
    if g_z is not None:
        g_z = g_z.to(x.dtype).contiguous()
    has_y = g_z is not None or g_lat is not None or g_s is not None
    flags = kernel_flags(x, dot_precision)
    BLOCK_D = block_d(D)
    rcfg, ccfg = row_config(D, x.dtype), col_config(D, x.dtype)
    lo, hi = split_seed(seed)
    dummy = ent  # stands in for absent optional pointers; never read (constexpr flags)
    opt = lambda t: dummy if t is None else t  # noqa: E731
    row_launch = dict(BLOCK_N=rcfg.BLOCK_N, BLOCK_K=rcfg.BLOCK_K, BLOCK_D=BLOCK_D,
                      num_warps=rcfg.num_warps, num_stages=rcfg.num_stages)

    # the Δ pass takes the flags of the terms inside Y and Δq; the dx / dμ kernels take all of them
    has = dict(HAS_GZ=g_z is not None, HAS_GLAT=g_lat is not None, HAS_GS=g_s is not None,
               HAS_GC=g_c is not None, HAS_NOISE=noise is not None, **flags)
    delta_y = torch.empty(N, dtype=torch.float32, device=dev) if has_y else None
    delta_q = torch.empty(N, dtype=torch.float32, device=dev) if g_c is not None else None
    if has_y or g_c is not None:
        _gmvq_bwd_delta_kernel[(triton.cdiv(N, rcfg.BLOCK_N),)](
            x, means, a, b, v, opt(noise), stats, opt(g_z), opt(g_lat), opt(g_s), opt(g_c),
            opt(delta_y), opt(delta_q), N, K, D, lo, hi, y_scale(tau), **has, **row_launch)

    common = (x, means, a, b, v, opt(noise), ent, stats, opt(delta_y),
              opt(delta_q), opt(hard_idx), opt(g_z), opt(g_lse), opt(g_h), opt(g_lat), opt(g_s), opt(g_c))
    meta = dict(has, HAS_GLSE=g_lse is not None, HAS_GH=g_h is not None, HARD=hard)

    dx = torch.empty((N, D), dtype=torch.float32, device=dev)
    _gmvq_bwd_dx_kernel[(triton.cdiv(N, rcfg.BLOCK_N),)](
        *common, dx, N, K, D, lo, hi, 1.0 / tau, y_scale(tau), **meta, **row_launch)

    n_col = triton.cdiv(K, ccfg.BLOCK_K)
    splits, rows_per_split = split_rows(N, n_col, ccfg.BLOCK_N, dev)
    dmu_part = torch.empty((splits, K, D), dtype=torch.float32, device=dev)
    dlv_part, dlp_part = (torch.empty((splits, K), dtype=torch.float32, device=dev) for _ in range(2))
    _gmvq_bwd_dmu_kernel[(n_col, splits)](
        *common, dmu_part, dlv_part, dlp_part, N, K, D, 0.5 * D, lo, hi, 1.0 / tau, y_scale(tau), rows_per_split,
        **meta, BLOCK_N=ccfg.BLOCK_N, BLOCK_K=ccfg.BLOCK_K, BLOCK_D=BLOCK_D,
        num_warps=ccfg.num_warps, num_stages=ccfg.num_stages)
    return dx.to(x.dtype), dmu_part.sum(0).to(means.dtype), dlv_part.sum(0), dlp_part.sum(0)
