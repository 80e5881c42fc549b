"""Forward kernels of the fused GM-VQ op (DESIGN.md §1, §3).

``_gmvq_fwd_kernel`` (row blocks, streams the codebook): one program owns BLOCK_N rows of x and walks
all K codes in BLOCK_K tiles. Per tile: d = ||x||² + ||μ||² − 2·x·μᵀ (one tensor-core dot), the logits
ℓ = b − d·a, two online softmaxes (q over ℓ; y over (ℓ + g)/τ with in-kernel Gumbel noise g), the
running argmax of ℓ (codes) and of ℓ + g (hard sample), and ``acc_z += p_y·μ`` (a second dot), with
FlashAttention rescaling. It writes the row outputs plus the few row statistics backward needs.
FLOPs 4·N·K·D; bytes: x and the outputs once, the codebook once per row block.

``_gmvq_fwd_colsum_kernel`` (column blocks × row splits): q̄ needs each row's final logsumexp, so a
second pass recomputes ℓ and sums q = exp(ℓ − lse) over rows. Each split writes its own partial
column sum (no atomics: bitwise deterministic). FLOPs 2·N·K·D.

No N×K tensor exists at any point: the only buffers are O(N·D + K·D).
"""
import torch
import triton
import triton.language as tl

from .config import INTERPRET, block_d, col_config, row_config, split_rows
from .noise import gumbel_tile, split_seed

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def load_rows(x_ptr, offs_n, N, D, offs_d, UPCAST: tl.constexpr):
    """x tile (BLOCK_N, BLOCK_D) as stored (or fp32 under UPCAST) and its fp32 squared norms."""
    mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    xf = x.to(tl.float32)
    if UPCAST:
        x = xf
    return x, tl.sum(xf * xf, axis=1)


@triton.jit
def load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST: tl.constexpr):
    """Code tile (BLOCK_K, BLOCK_D) as stored (fp32 under UPCAST), its fp32 squared norms, a and b."""
    mask_k = offs_k < K
    mu = tl.load(means_ptr + offs_k[:, None] * D + offs_d[None, :],
                 mask=mask_k[:, None] & (offs_d[None, :] < D), other=0.0)
    muf = mu.to(tl.float32)
    if UPCAST:
        mu = muf
    a = tl.load(a_ptr + offs_k, mask=mask_k, other=0.0)
    b = tl.load(b_ptr + offs_k, mask=mask_k, other=0.0)
    return mu, tl.sum(muf * muf, axis=1), a, b


@triton.jit
def logits_tile(x, xx, mu, mm, a, b, mask_k, DOT_PRECISION: tl.constexpr):
    """One (BLOCK_N, BLOCK_K) tile of distances and logits: (d, logits, grad_mask). ``d`` is the
    clamped squared distance, ``logits`` ℓ = b − d·a with −inf in padded columns, ``grad_mask`` where the
    clamp passes gradient (raw d ≥ 0, as torch.clamp_min)."""
    xm = tl.dot(x, tl.trans(mu), input_precision=DOT_PRECISION)
    d_raw = xx[:, None] + mm[None, :] - 2.0 * xm
    d = tl.maximum(d_raw, 0.0)
    logits = tl.where(mask_k[None, :], b[None, :] - d * a[None, :], float("-inf"))
    return d, logits, d_raw >= 0.0


@triton.jit
def noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K,
               HAS_NOISE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gumbel noise for a tile: the explicit (N, K) tensor when given, else drawn from (seed, n, k)."""
    if HAS_NOISE:
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        g = tl.load(noise_ptr + offs_n[:, None] * K + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        g = gumbel_tile(seed_lo, seed_hi, offs_n, k_start, BLOCK_K)
    return g


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_fwd_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, noise_ptr,
    z_ptr, codes_ptr, lse_ptr, lat_ptr, s2_ptr, ent_ptr,
    stats_ptr, hard_idx_ptr,
    N, K, D, seed_lo, seed_hi, y_scale,
    HAS_NOISE: tl.constexpr, HARD: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    x, xx = load_rows(x_ptr, offs_n, N, D, offs_d, UPCAST)

    # Both softmaxes keep their running max in natural units and form exponents as (e − m)·scale, as
    # torch's softmax does: e − m is exact near the maximum, so large logits (small τ, far codes)
    # lose nothing to the scaling. q = softmax(ℓ): max m_q (= max ℓ, so it also drives the argmax),
    # sum s_q, and u_q = Σ p·(ℓ − m_q) for the entropy.
    m_q = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_q = tl.zeros((BLOCK_N,), tl.float32)
    u_q = tl.zeros((BLOCK_N,), tl.float32)
    best_k = tl.zeros((BLOCK_N,), tl.int64)
    # y = softmax((ℓ + g)/τ): max m_y of ℓ + g, sum, and the p_y-weighted sums of μ, σ², d/(2σ²)
    m_y = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_y = tl.zeros((BLOCK_N,), tl.float32)
    acc_z = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    acc_v = tl.zeros((BLOCK_N,), tl.float32)
    acc_lat = tl.zeros((BLOCK_N,), tl.float32)
    # hard sample: argmax of ℓ + g and its d·a, σ²
    hard_k = tl.zeros((BLOCK_N,), tl.int64)
    hard_lat = tl.zeros((BLOCK_N,), tl.float32)
    hard_v = tl.zeros((BLOCK_N,), tl.float32)

    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        mu, mm, a, b = load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST)
        d, logits, _ = logits_tile(x, xx, mu, mm, a, b, offs_k < K, DOT_PRECISION)
        v = tl.load(v_ptr + offs_k, mask=offs_k < K, other=0.0)
        valid = (offs_k < K)[None, :]
        da = d * a[None, :]

        # --- q statistics
        tile_max = tl.max(logits, axis=1)
        m_new = tl.maximum(m_q, tile_max)
        alpha = tl.exp2((m_q - m_new) * LOG2E)
        rel = logits - m_new[:, None]  # −inf in padded columns
        p = tl.exp2(rel * LOG2E)
        shift = tl.where(s_q > 0, m_q - m_new, 0.0)
        u_q = alpha * (u_q + shift * s_q) + tl.sum(p * tl.where(valid, rel, 0.0), axis=1)
        s_q = alpha * s_q + tl.sum(p, axis=1)
        better = tile_max > m_q  # strict: the first maximum wins, as torch.argmax
        best_k = tl.where(better, tl.argmax(logits, axis=1).to(tl.int64) + k_start, best_k)
        m_q = m_new

        # --- y statistics
        g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, HAS_NOISE, BLOCK_K)
        noisy = tl.where(valid, logits + g, float("-inf"))
        tile_ymax = tl.max(noisy, axis=1)
        m_y_new = tl.maximum(m_y, tile_ymax)
        alpha_y = tl.exp2((m_y - m_y_new) * y_scale)
        p_y = tl.exp2((noisy - m_y_new[:, None]) * y_scale)
        s_y = alpha_y * s_y + tl.sum(p_y, axis=1)
        acc_v = alpha_y * acc_v + tl.sum(p_y * v[None, :], axis=1)
        acc_lat = alpha_y * acc_lat + tl.sum(p_y * da, axis=1)
        acc_z = acc_z * alpha_y[:, None] + tl.dot(p_y.to(mu.dtype), mu, input_precision=DOT_PRECISION)
        if HARD:
            better_y = tile_ymax > m_y
            tile_yarg = tl.argmax(noisy, axis=1)
            pick = tl.arange(0, BLOCK_K)[None, :] == tile_yarg[:, None]
            hard_k = tl.where(better_y, tile_yarg.to(tl.int64) + k_start, hard_k)
            hard_lat = tl.where(better_y, tl.sum(tl.where(pick, da, 0.0), axis=1), hard_lat)
            hard_v = tl.where(better_y, tl.sum(tl.where(pick, v[None, :], 0.0), axis=1), hard_v)
        m_y = m_y_new

    lse = m_q + tl.log2(s_q) * LN2
    entropy = tl.log2(s_q) * LN2 - u_q / s_q
    mask_nd = mask_n[:, None] & (offs_d[None, :] < D)
    nd = offs_n[:, None] * D + offs_d[None, :]
    tl.store(codes_ptr + offs_n, best_k, mask=mask_n)
    tl.store(lse_ptr + offs_n, lse, mask=mask_n)
    tl.store(ent_ptr + offs_n, entropy, mask=mask_n)
    # row softmax statistics (max in natural units, log2 of the sum), kept apart so that backward's
    # exp2((e − m)·scale − log2 s) reproduces the forward's probabilities
    tl.store(stats_ptr + offs_n, m_q, mask=mask_n)
    tl.store(stats_ptr + N + offs_n, tl.log2(s_q), mask=mask_n)
    tl.store(stats_ptr + 2 * N + offs_n, m_y, mask=mask_n)
    tl.store(stats_ptr + 3 * N + offs_n, tl.log2(s_y), mask=mask_n)
    if HARD:
        z_hard = tl.load(means_ptr + hard_k[:, None] * D + offs_d[None, :], mask=mask_nd, other=0.0)
        tl.store(z_ptr + nd, z_hard, mask=mask_nd)
        tl.store(lat_ptr + offs_n, hard_lat, mask=mask_n)
        tl.store(s2_ptr + offs_n, hard_v, mask=mask_n)
        tl.store(hard_idx_ptr + offs_n, hard_k, mask=mask_n)
    else:
        tl.store(z_ptr + nd, (acc_z / s_y[:, None]).to(z_ptr.dtype.element_ty), mask=mask_nd)
        tl.store(lat_ptr + offs_n, acc_lat / s_y, mask=mask_n)
        tl.store(s2_ptr + offs_n, acc_v / s_y, mask=mask_n)


@triton.jit
def log2_softmax(e, scale, stats_ptr, offs_n, N, WHICH: tl.constexpr):
    """(e − m)·scale − log2 s: log2-probabilities of softmax WHICH (0: q over e = ℓ with scale log2 e;
    1: y over e = ℓ + g with scale log2(e)/τ), from the forward's (4, N) row statistics."""
    mask_n = offs_n < N
    m = tl.load(stats_ptr + (2 * WHICH) * N + offs_n, mask=mask_n, other=0.0)
    log_s = tl.load(stats_ptr + (2 * WHICH + 1) * N + offs_n, mask=mask_n, other=0.0)
    return (e - m[:, None]) * scale - log_s[:, None]


@triton.jit
def softmax_prob(e, scale, stats_ptr, offs_n, N, WHICH: tl.constexpr):
    return tl.exp2(log2_softmax(e, scale, stats_ptr, offs_n, N, WHICH))


@triton.jit
def _gmvq_fwd_colsum_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, stats_ptr, part_ptr,
    N, K, D, rows_per_split,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    row_lo = split.to(tl.int64) * rows_per_split
    row_hi = tl.minimum(row_lo + rows_per_split, N)
    mu, mm, a, b = load_codes(means_ptr, a_ptr, b_ptr, offs_k, K, D, offs_d, UPCAST)
    colsum = tl.zeros((BLOCK_K,), tl.float32)
    for n_start in range(row_lo, row_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < row_hi
        x, xx = load_rows(x_ptr, offs_n, row_hi, D, offs_d, UPCAST)
        _, logits, _ = logits_tile(x, xx, mu, mm, a, b, offs_k < K, DOT_PRECISION)
        q = softmax_prob(logits, LOG2E, stats_ptr, offs_n, N, 0)
        colsum += tl.sum(tl.where(mask_n[:, None], q, 0.0), axis=0)
    tl.store(part_ptr + split * K + offs_k, colsum, mask=offs_k < K)


def y_scale(tau):
    """log2(e)/τ: the one factor turning ℓ + g into the log2-unit exponent of y, shared by every kernel."""
    return LOG2E.value / tau


def kernel_flags(x, dot_precision):
    """Constexpr flags shared by every launch: the dot precision (fp32 only) and interpreter upcast."""
    # The interpreter's bf16/fp16 dot returns garbage (DESIGN.md §4): compute it in fp32 there.
    upcast = INTERPRET and x.dtype != torch.float32
    prec = dot_precision if x.dtype == torch.float32 else "ieee"
    return dict(DOT_PRECISION=prec, UPCAST=upcast)


def gmvq_fwd(x, means, a, b, v, *, tau, hard, seed, noise, dot_precision):
    """Launch the forward. x (N, D) and means (K, D): contiguous, one of fp32/fp16/bf16, same dtype;
    a, b, v (K,) fp32 contiguous (see reference.component_terms); noise None or (N, K) contiguous.

    Returns (outputs, saved): outputs = (z (N, D) x.dtype, codes (N,) int64, lse (N,), q̄ (K,),
    lat (N,), s2 (N,), entropy (N,)), statistics in fp32; saved = (stats, hard_idx) for the backward:
    stats (4, N) fp32 = [m_q, log2 s_q, m_y, log2 s_y], the row maxima (natural units) and log2-sums
    of the two softmaxes; hard_idx (N,) int64 the hard sample (None unless ``hard``)."""
    N, D = x.shape
    K = means.shape[0]
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    z = torch.empty_like(x)
    codes = torch.empty(N, dtype=torch.int64, device=dev)
    lse, lat, s2, ent = (torch.empty(N, **f32) for _ in range(4))
    stats = torch.empty((4, N), **f32)
    hard_idx = torch.empty(N, dtype=torch.int64, device=dev) if hard else None
    lo, hi = split_seed(seed)
    flags = kernel_flags(x, dot_precision)
    cfg = row_config(D, x.dtype)
    _gmvq_fwd_kernel[(triton.cdiv(N, cfg.BLOCK_N),)](
        x, means, a, b, v, noise if noise is not None else x,
        z, codes, lse, lat, s2, ent, stats, hard_idx if hard else codes,
        N, K, D, lo, hi, y_scale(tau),
        HAS_NOISE=noise is not None, HARD=hard, **flags,
        BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, BLOCK_D=block_d(D),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    agg = colsum_q(x, means, a, b, stats, flags) / N
    return (z, codes, lse, agg, lat, s2, ent), (stats, hard_idx)


def colsum_q(x, means, a, b, stats, flags):
    """Σ_n q_nk (K,) fp32 from the forward's final row statistics, deterministic."""
    N, D = x.shape
    K = means.shape[0]
    cfg = col_config(D, x.dtype)
    n_col = triton.cdiv(K, cfg.BLOCK_K)
    splits, rows_per_split = split_rows(N, n_col, cfg.BLOCK_N, x.device)
    part = torch.empty((splits, K), dtype=torch.float32, device=x.device)
    _gmvq_fwd_colsum_kernel[(n_col, splits)](
        x, means, a, b, stats, part, N, K, D, rows_per_split, **flags,
        BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, BLOCK_D=block_d(D),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return part.sum(0)
