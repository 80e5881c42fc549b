"""Forward kernels of the fused GM-VQ op (docs/design.md §1, §3).

``_gmvq_fwd_kernel`` (row blocks, streams the codebook): one program owns BLOCK_N rows of x and walks
all K codes in BLOCK_K tiles. Per tile: d = ||x||² + ||μ||² − 2·x·μᵀ (one tensor-core dot), the logits
ℓ = b − d·a, two online softmaxes (q over ℓ; y over (ℓ + g)/τ with in-kernel Gumbel noise g), the
running argmax of ℓ (codes) and of ℓ + g (hard sample), and ``acc_z += p_y·μ`` (a second dot), with
FlashAttention rescaling (at τ = 1 with drawn noise the sample's exponentials come from q's:
``forward_tau_one``). It writes the row outputs plus the few row statistics backward needs.
FLOPs 4·N·K·D; bytes: x and the outputs once, the codebook once per row block. When there are few row
blocks (small N: N = 8192 makes 128 CTAs of 4 warps for 132 SMs, one warp per scheduler), the codebook
is split across programs (config.split_codes, as flash-decoding does): each split writes its running
softmax states and ``combine_splits`` merges them in torch (fixed order: deterministic).

``_gmvq_fwd_colsum_kernel`` (column blocks × row splits): q̄ needs each row's final logsumexp, so a
second pass recomputes ℓ and sums q = exp(ℓ − lse) over rows. Each split writes its own partial
column sum (no atomics: bitwise deterministic). FLOPs 2·N·K·D.

No N×K tensor exists at any point: the only buffers are O(N·D + K·D).
"""
import math

import torch
import triton
import triton.language as tl

from .config import (block_d, check_shared_memory, colsum_config, lazy_rescale_allowed, row_config, serial_wgmma,
                     split_codes, split_rows, tensor_memory_arch)
from .noise import kernel_seed, seed_args
from .spec import GMVQOutput, code_sq_norms
from .tiles import (LN2, LOG2E, LOG2S_Q, LOG2S_Y, M_Q, M_Y, N_STATS, TL_DTYPES, acc_norm_operand, code_mask,
                    code_norm_operand, code_row_distance, col_half_distance, dot_precision_for, even_k, even_n,
                    finish_splits, first_argmax, half_distances_logits, heuristics, in_first_split, interpreter_operand,
                    load_block, load_codes, load_rows, load_stats, mma, noise_tile, nonempty_range, norm_operand_buffer,
                    norm_parts, row_block_offsets, row_norm_operand, row_operands, row_tile, softmax_prob, split_code_range,
                    split_hi_lo, split_parts, split_row_range, sq_norms, tau_one, wide_codes, y_scale)


def forward_tau_one(args):
    """triton.heuristics rule of the forward's TAU_ONE (tiles.tau_one), except for fp16 inputs, where the
    sample's numerator p·(1/log₂ u) (up to 2²⁴ times q's) would leave fp16's range as the z dot's operand.
    A hard forward takes its sample from p·(1/log₂ u) relative to q's maximum whether or not its y sums
    move lazily (LAZY, only when a backward follows), so that the hard sample is the same either way."""
    return tau_one(args) and args["OP_DTYPE"] != tl.float16


FWD_HEURISTICS = heuristics({"EVEN_K": even_k, "TAU_ONE": forward_tau_one, "WIDE_CODES": wide_codes})
EVEN_KN = heuristics({"EVEN_K": even_k, "EVEN_N": even_n})
# a split's running state per row (rows of the fwd kernel's ``part`` buffer; combine_splits merges them)
# (h_y: the hard sample's ℓ + g, by which combine_splits picks the split holding it; m_y at τ ≠ 1)
PART_FIELDS = ("m_q", "s_q", "u_q", "m_y", "s_y", "acc_v", "acc_lat", "h_y")
PART_STRIDE = tl.constexpr(len(PART_FIELDS))
P_M_Q, P_S_Q, P_U_Q, P_M_Y, P_S_Y, P_ACC_V, P_ACC_LAT, P_H_Y = (tl.constexpr(i) for i in range(len(PART_FIELDS)))
# A row's y sums move to a new reference only once its p_y passes 2^LAZY_LOG2, and the new reference puts
# its largest p_y at 2^-LAZY_HEADROOM (_gmvq_fwd_kernel, LAZY): terms under 2^-126 flush, 2^-62 of the
# largest, far below fp32's resolution. 1–4 moves per program at the anchor rows (benchmarks/README.md).
# fp16 holds the p_y operand only within [2^-14, 65504]: there the largest p_y stays in [1, 2^15].
LAZY_LOG2, LAZY_HEADROOM = tl.constexpr(16.0), tl.constexpr(64.0)
LAZY_LOG2_FP16 = tl.constexpr(15.0)
LAZY_MIN_BLOCK_D = 128


def lazy_rescale_on(dtype, hard, with_sums, BLOCK_D, device=None):
    """Whether the forward kernel moves its y sums lazily (LAZY): for half inputs from BLOCK_D =
    LAZY_MIN_BLOCK_D on, where acc_z is formed (soft mode, or hard mode with the soft sums). Below that
    BLOCK_D the flag costs more than the multiply it saves; fp32 with tf32x3 spills more with it, and
    a hard forward without the sums has no acc_z to spare (static report, docs/speed_history.md, item 25).
    Never with GMVQ_LAZY_RESCALE=0 (config.lazy_rescale_allowed), nor on a ``device`` of compute
    capability 10.x, where triton fails to compile it (config.tensor_memory_arch)."""
    return (dtype != torch.float32 and (with_sums or not hard) and BLOCK_D >= LAZY_MIN_BLOCK_D
            and lazy_rescale_allowed() and not tensor_memory_arch(device))


@triton.jit
def lazy_rescale(r_y, m_y, y_scale):
    """The factor taking sums relative to the reference r_y to the reference m_y: 1 where they are
    equal, which also keeps a row whose loop saw no codes (both −inf: an empty split) at 0, not NaN."""
    return tl.where(r_y == m_y, 1.0, tl.exp2((r_y - m_y) * y_scale))


@triton.jit
def rescale_sums(alpha_y, s_y, acc_v, acc_lat, acc_z):
    """The forward's y sums times the per-row factor alpha_y (a move of their reference)."""
    return alpha_y * s_y, alpha_y * acc_v, alpha_y * acc_lat, acc_z * alpha_y[:, None]


@triton.jit
def lazy_move(m, r_y, y_scale, lazy_limit, headroom, s_y, acc_v, acc_lat, acc_z):
    """LAZY's step: the rows whose maximum m passed their reference r_y by lazy_limit (log2 units) take
    m + headroom as their new one, their sums rescaled to it. One flag for the whole program (a NaN row
    never raises it: its outputs are NaN anyway), but only the rows past the window move: the others are
    multiplied by exactly 1, so a row's sums never depend on the other rows of its program. Returns
    (r_y, s_y, acc_v, acc_lat, acc_z)."""
    past = (m - r_y) * y_scale > lazy_limit
    if tl.max(past.to(tl.int32), axis=0) > 0:
        r_new = tl.where(past, m + headroom, r_y)
        s_y, acc_v, acc_lat, acc_z = rescale_sums(lazy_rescale(r_y, r_new, y_scale), s_y, acc_v, acc_lat, acc_z)
        r_y = r_new
    return r_y, s_y, acc_v, acc_lat, acc_z


@FWD_HEURISTICS
@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_fwd_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, mp_ptr, noise_ptr,
    z_ptr, ysum_ptr, codes_ptr, lse_ptr, lat_ptr, s2_ptr, ent_ptr, stats_ptr, hard_idx_ptr, xx_ptr, xq_ptr,
    part_ptr, part_k_ptr, part_z_ptr,
    N, K, D, seed_lo, seed_hi, seed_ptr, y_scale, codes_per_split,
    HARD: tl.constexpr, SPLIT: tl.constexpr, Y_SUMS: tl.constexpr, OP_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, NONEMPTY: tl.constexpr, LAZY: tl.constexpr,
    TAU_ONE: tl.constexpr, WIDE_CODES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Row outputs of BLOCK_N rows, streaming the codebook. Output pointers by symbol: z = quantized,
    lse = log_likelihood, lat = latent_nll, s2 = mixture_var (s²), ent = entropy.

    x (N, D), means (K, D): the inputs; a, b, v, mm (K,) fp32: per-code constants (spec.component_terms,
    spec.code_sq_norms); mp (K, 16): the codes' norm operand (tiles.code_norm_operand; None: the norms
    are added per element, see tiles.row_tile), the rows' is formed here; noise_ptr: explicit (N, K)
    fp32 noise or None (drawn from the seed: seed_lo/seed_hi, or the int64 at seed_ptr,
    noise.kernel_seed). Writes z (N, D) in x's dtype, codes (N,) int64, lse, lat, s2, ent (N,) fp32,
    stats (N, 4) fp32 (tiles.M_Q .. LOG2S_Y), xx = ||x||² (N,) fp32 and, unless None, xq (N, 16) the
    column kernels' norm operand of it (tiles.row_norm_operand) (both by split 0 when SPLIT) and, when
    HARD, hard_idx (N,) int64.
    y_scale = log2(e)/τ. DOT_PRECISION: tl.dot input precision.

    OP_DTYPE: x's dtype (the dot operand type on a GPU; the interpreter gets fp32 operands, so naming
    it here keeps p_y's rounding to it visible to the CPU tests). Half inputs: p_y enters
    the z dot as two half operands p_hi + p_lo (tiles.split_hi_lo, within 2⁻¹⁷), so acc_z is
    fp32-accurate (p_y rounded alone errs by 2⁻⁹ of |μ|; z is the same whether or not Y_SUMS). Y_SUMS (see
    ``delta_from_forward``): the soft sample's sums [Σ y μ, Σ y d a, Σ y σ²] are written in fp32 to
    ysum (N, D + 2) for the backward, in hard mode too.

    NONEMPTY: the split loop's range is declared non-empty (tiles.nonempty_range; False only for
    config.serial_wgmma's side-by-side timing). LAZY: the y sums follow their maximum lazily
    (lazy_rescale_on; see the loop). TAU_ONE (forward_tau_one): the sample's numerator from q's (see the
    loop), its statistics then relative to q's maximum (m_y = m_q: the backward's tiles.sample_scale
    takes any reference).

    SPLIT (few row blocks, config.split_codes): program_id(1) walks only its codes_per_split codes and
    writes its running state instead (part (splits, len(PART_FIELDS), N) fp32, part_k (splits, 2, N)
    int64: best code and hard code, part_z (splits, N, D) fp32: Σ p_y μ); ``combine_splits`` merges."""
    seed_lo, seed_hi = kernel_seed(seed_lo, seed_hi, seed_ptr)
    if SPLIT:
        split, k_lo, k_hi = split_code_range(codes_per_split, K)
        k_lo, k_hi = nonempty_range(k_lo, k_hi, NONEMPTY)  # serialised wgmma at D = 32 without
    else:
        # the norm dot's second wgmma group serialised every wgmma without it (static report, C7515)
        k_lo, k_hi = nonempty_range(0, K, NONEMPTY and mp_ptr is not None)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    x = load_rows(x_ptr, offs_n, N, D, offs_d)
    xx = sq_norms(x)
    x, xp = row_operands(x, xx, mp_ptr is not None)  # x·(−2) with the norm dot (tiles.row_tile)
    first = in_first_split(mask_n, split) if SPLIT else mask_n
    tl.store(xx_ptr + offs_n, xx, mask=first)
    if xq_ptr is not None:  # the column kernels' rows operand (tiles.row_norm_operand), for q̄ and dμ
        tl.store(xq_ptr + offs_n[:, None] * 16 + tl.arange(0, 16)[None, :],
                 norm_parts(xx, -0.5, True).to(xq_ptr.dtype.element_ty), mask=first[:, None])

    # Both softmaxes keep their running max in natural units and form exponents as (e − m)·scale, as
    # torch's softmax does: e − m is exact near the maximum, so large logits (small τ, far codes)
    # lose nothing to the scaling. q = softmax(ℓ): max m_q (= max ℓ, so it also drives the argmax),
    # sum s_q, and u_q = Σ p·(ℓ − m_q) for the entropy.
    m_q = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_q = tl.zeros((BLOCK_N,), tl.float32)
    u_q = tl.zeros((BLOCK_N,), tl.float32)
    best_k = tl.zeros((BLOCK_N,), tl.int64)
    # y = softmax((ℓ + g)/τ): max m_y of ℓ + g, sum, and the p_y-weighted sums of μ, σ², d/(2σ²),
    # kept relative to a reference r_y. With LAZY (lazy_rescale_on), lazily (FlashAttention-4):
    # a row's r_y is set LAZY_HEADROOM log2 units above its m_y and moves only when its maximum passes
    # it by LAZY_LOG2, so most tiles skip the multiply of acc_z (BLOCK_D/2 FMULs per thread and tile on a
    # warpgroup's 64 rows: 4 per element at D = 128) for a program-wide flag (~26 instructions per
    # thread and tile: static report). p_y ≤ 2^LAZY_LOG2 and the largest term ≥ 2^-LAZY_HEADROOM lose
    # nothing in fp32 (the headroom spares moves: with 2^32, 49–60 per program at D = 256 on the
    # benchmark's inputs, 1–4 with 2^64). Without, r_y = m_y at every tile, as FlashAttention-2. After
    # the loop the sums are rescaled once to m_y: the statistics written are those of the true maximum
    # either way.
    m_y = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    r_y = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    if OP_DTYPE == tl.float16:
        lazy_limit, headroom = LAZY_LOG2_FP16, 0.0
    else:
        lazy_limit, headroom = LAZY_LOG2, LAZY_HEADROOM / y_scale
    s_y = tl.zeros((BLOCK_N,), tl.float32)
    acc_z = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    acc_v = tl.zeros((BLOCK_N,), tl.float32)
    acc_lat = tl.zeros((BLOCK_N,), tl.float32)
    # hard sample: argmax of ℓ + g (its d·a and σ² come after the loop, from its mean); with TAU_ONE the
    # most negative p·(1/log₂ u) so far, best_y (relative to m_q). Its code int32 in the loop (K < 2³¹:
    # checks.MAX_K; int64 cost the τ = 1 hard forward 16 B of spills at D = 128: static report)
    hard_k = tl.zeros((BLOCK_N,), tl.int32)
    best_y = tl.zeros((BLOCK_N,), tl.float32)

    for k_start in range(k_lo, k_hi, BLOCK_K):
        offs_k, mask_k, mu, a, v, d, logits, _clamp = row_tile(x, xx, xp, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr,
                                                               mp_ptr, k_start, K, D, offs_d, EVEN_K, BLOCK_K,
                                                               DOT_PRECISION, WIDE_CODES)
        valid = mask_k[None, :]
        da = d * a[None, :]

        # --- q statistics
        tile_max = tl.max(logits, axis=1)
        tile_arg = first_argmax(logits, tile_max, BLOCK_K)
        m_new = tl.maximum(m_q, tile_max)
        alpha = tl.exp2((m_q - m_new) * LOG2E)
        rel = logits - m_new[:, None]  # −inf in padded columns
        p = tl.exp2(rel * LOG2E)
        shift = tl.where(s_q > 0, m_q - m_new, 0.0)
        u_q = alpha * (u_q + shift * s_q) + tl.sum(p * tl.where(valid, rel, 0.0), axis=1)
        s_q = alpha * s_q + tl.sum(p, axis=1)
        better = tile_max > m_q  # strict: the first maximum wins, as torch.argmax
        best_k = tl.where(better, tile_arg.to(tl.int64) + k_start, best_k)
        m_q = m_new

        # --- y statistics
        if TAU_ONE:
            # exp(ℓ + g − r_y) = p·exp(m_q − r_y)/E with E = −ln u = −log₂ u·ln 2 (benchmarks/README.md,
            # lever 15): p_y = p·(1/log₂ u)·exp(m_q − r_y), q's exponential times one rcp instead of g's
            # second log, ℓ + g, its maximum and an exponential of its own. p_y ≤ 0: the sums' sign and
            # log₂ e come after the loop. The reference follows q's maximum: r_y = m_q (FA2, q's α), or
            # lazily (LAZY, lazy_move) from m_q as below from m_y. The largest term, ≥ p(argmax q)·|1/log₂ u| ≥ 1/24
            # times exp(m_q − r_y), and ≤ 2²⁴ times it, stays in fp32 and bf16
            w = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K, False, True)
            if LAZY:
                r_y, s_y, acc_v, acc_lat, acc_z = lazy_move(m_q, r_y, LOG2E, lazy_limit, headroom, s_y, acc_v,
                                                            acc_lat, acc_z)
            else:
                s_y, acc_v, acc_lat, acc_z = rescale_sums(alpha, s_y, acc_v, acc_lat, acc_z)
                r_y = m_q
            t = p * w
            if HARD:  # argmax of ℓ + g = argmin of p·w (strict: first wins), relative to m_q with or without LAZY
                tile_ybest = tl.min(t, axis=1)
                tile_yarg = first_argmax(t, tile_ybest, BLOCK_K)
                best_y *= alpha
                hard_k = tl.where(tile_ybest < best_y, tile_yarg + k_start, hard_k)
                best_y = tl.minimum(best_y, tile_ybest)
            p_y = t * tl.exp2((m_q - r_y) * LOG2E)[:, None] if LAZY else t
        else:
            g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K)
            noisy = tl.where(valid, logits + g, float("-inf"))
            tile_ymax = tl.max(noisy, axis=1)
            if HARD:
                tile_yarg = first_argmax(noisy, tile_ymax, BLOCK_K)
            if HARD:
                hard_k = tl.where(tile_ymax > m_y, tile_yarg + k_start, hard_k)
            m_y = tl.maximum(m_y, tile_ymax)
            if LAZY:
                r_y, s_y, acc_v, acc_lat, acc_z = lazy_move(m_y, r_y, y_scale, lazy_limit, headroom, s_y, acc_v,
                                                            acc_lat, acc_z)
            else:
                s_y, acc_v, acc_lat, acc_z = rescale_sums(tl.exp2((r_y - m_y) * y_scale), s_y, acc_v, acc_lat,
                                                          acc_z)
                r_y = m_y
            p_y = tl.exp2((noisy - r_y[:, None]) * y_scale)
        s_y += tl.sum(p_y, axis=1)
        acc_v += tl.sum(p_y * v[None, :], axis=1)
        acc_lat += tl.sum(p_y * da, axis=1)
        if OP_DTYPE != tl.float32:
            p_hi, p_lo = split_hi_lo(p_y, OP_DTYPE)
            acc_z = tl.dot(p_hi.to(mu.dtype), mu, acc_z, input_precision=DOT_PRECISION)
            acc_z = tl.dot(p_lo.to(mu.dtype), mu, acc_z, input_precision=DOT_PRECISION)
        else:
            acc_z = mma(p_y, mu, acc_z, DOT_PRECISION, True)

    if TAU_ONE:  # the sums to q's maximum, positive: E's −ln 2 (m_y = m_q: an exact reference for the statistics)
        alpha_y = lazy_rescale(r_y, m_q, LOG2E) * -LOG2E
        s_y, acc_v, acc_lat, acc_z = rescale_sums(alpha_y, s_y, acc_v, acc_lat, acc_z)
        best_y *= -LOG2E  # exp(ℓ + g − m_q) at the hard sample
        m_y = m_q
    elif LAZY:  # the sums to the true maximum, once per row
        s_y, acc_v, acc_lat, acc_z = rescale_sums(lazy_rescale(r_y, m_y, y_scale), s_y, acc_v, acc_lat, acc_z)

    hard_k = hard_k.to(tl.int64)
    mask_nd = mask_n[:, None] & (offs_d[None, :] < D)
    nd = row_block_offsets(BLOCK_N, D, offs_d)  # not offs_n·D + offs_d (spills: see there)
    if SPLIT:
        part = part_ptr + split * PART_STRIDE * N + offs_n
        tl.store(part + P_M_Q * N, m_q, mask=mask_n)
        tl.store(part + P_S_Q * N, s_q, mask=mask_n)
        tl.store(part + P_U_Q * N, u_q, mask=mask_n)
        tl.store(part + P_M_Y * N, m_y, mask=mask_n)
        tl.store(part + P_S_Y * N, s_y, mask=mask_n)
        tl.store(part_k_ptr + split * 2 * N + offs_n, best_k, mask=mask_n)
        if HARD:
            tl.store(part_k_ptr + (split * 2 + 1) * N + offs_n, hard_k, mask=mask_n)
            # the hard sample's ℓ + g (τ = 1: one log per row), which picks the split that holds it
            tl.store(part + P_H_Y * N, m_q + tl.log2(best_y) * LN2 if TAU_ONE else m_y, mask=mask_n)
        if Y_SUMS or not HARD:
            tl.store(part + P_ACC_V * N, acc_v, mask=mask_n)
            tl.store(part + P_ACC_LAT * N, acc_lat, mask=mask_n)
            tl.store(part_z_ptr + split * N * D + nd, acc_z, mask=mask_nd)
    else:
        # NaN policy: a row whose x is not finite (or whose ||x||² overflows fp32) gets NaN outputs and
        # statistics (so q̄ and every gradient it reaches are NaN too) and code −1: the GPU's max/argmax
        # would otherwise skip its NaN logits and return finite garbage
        if mp_ptr is not None:
            # ||x||² read back as this program stored it (the barrier makes its stores visible to all its
            # threads): kept in registers across a loop that does not read it (the norm dot's), it spilled
            # (static report, triton 3.6.0, the hard forward at D = 128: 40 B)
            tl.debug_barrier()
            xx = tl.load(xx_ptr + offs_n, mask=mask_n, other=0.0)
        bad = ~(xx < float("inf"))
        lse = tl.where(bad, float("nan"), m_q + tl.log2(s_q) * LN2)
        entropy = tl.where(bad, float("nan"), tl.log2(s_q) * LN2 - u_q / s_q)
        tl.store(codes_ptr + offs_n, tl.where(bad, -1, best_k), mask=mask_n)
        tl.store(lse_ptr + offs_n, lse, mask=mask_n)
        tl.store(ent_ptr + offs_n, entropy, mask=mask_n)
        rec = stats_ptr + offs_n * N_STATS
        tl.store(rec + M_Q, tl.where(bad, float("nan"), m_q), mask=mask_n)
        tl.store(rec + LOG2S_Q, tl.log2(s_q), mask=mask_n)
        tl.store(rec + M_Y, tl.where(bad, float("nan"), m_y), mask=mask_n)
        tl.store(rec + LOG2S_Y, tl.log2(s_y), mask=mask_n)
        soft_z = tl.where(bad[:, None], float("nan"), acc_z / s_y[:, None])
        soft_lat = tl.where(bad, float("nan"), acc_lat / s_y)
        soft_v = tl.where(bad, float("nan"), acc_v / s_y)
        if Y_SUMS:
            row = ysum_ptr + offs_n * (D + 2)
            tl.store(row[:, None] + offs_d[None, :], soft_z, mask=mask_nd)
            tl.store(row + D, soft_lat, mask=mask_n)
            tl.store(row + D + 1, soft_v, mask=mask_n)
        if HARD:
            # the sample's d·a and σ² from its mean, once per row (picking them out of every tile cost
            # 5–10 instructions per element: static report, bf16 hard)
            z_hard, d_raw = code_row_distance(x_ptr, means_ptr, mm_ptr, hard_k, xx, nd, mask_nd, D, offs_d)
            hard_lat = tl.maximum(d_raw, 0.0) * tl.load(a_ptr + hard_k)
            hard_v = tl.load(v_ptr + hard_k)
            tl.store(z_ptr + nd, tl.where(bad[:, None], float("nan"), z_hard).to(z_ptr.dtype.element_ty), mask=mask_nd)
            tl.store(lat_ptr + offs_n, tl.where(bad, float("nan"), hard_lat), mask=mask_n)
            tl.store(s2_ptr + offs_n, tl.where(bad, float("nan"), hard_v), mask=mask_n)
            tl.store(hard_idx_ptr + offs_n, hard_k, mask=mask_n)
        else:
            tl.store(z_ptr + nd, soft_z.to(z_ptr.dtype.element_ty), mask=mask_nd)
            tl.store(lat_ptr + offs_n, soft_lat, mask=mask_n)
            tl.store(s2_ptr + offs_n, soft_v, mask=mask_n)


@EVEN_KN
@triton.jit
def _gmvq_fwd_colsum_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, stats_ptr, xx_ptr, xp_ptr, part_ptr,
    N, K, D, rows_per_split,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Column sums Σ_n q_nk of BLOCK_K codes over one split of rows (program_id(1)), from the forward's
    row statistics and ||x||² (xx (N,) fp32; with the rows' norm operand xp (N, 16),
    tiles.row_norm_operand, the tensor cores add the norms: tiles.col_half_distance): writes part
    (splits, K) fp32. Inputs as for ``_gmvq_fwd_kernel``."""
    offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = code_mask(offs_k, K, EVEN_K)
    split, row_lo, row_hi = split_row_range(rows_per_split, N)
    offs_d = tl.arange(0, BLOCK_D)
    mu, mm, a, b, _v = load_codes(means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, offs_k, mask_k, D, offs_d)
    a2 = a + a  # tiles.half_distances_logits
    colsum = tl.zeros((BLOCK_K,), tl.float32)
    for n_start in range(row_lo, row_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        x = load_block(x_ptr, n_start, offs_n < row_hi, D, offs_d)
        xx = tl.load(xx_ptr + offs_n, mask=offs_n < row_hi, other=0.0)
        # transposed tile (codes × rows): the sum over rows stays inside each warp
        xp = load_block(xp_ptr, n_start, offs_n < row_hi, 16, tl.arange(0, 16)) if xp_ptr is not None else xx
        s = col_half_distance(mu, x, mm, xx, xp, xp_ptr is not None, DOT_PRECISION)
        _, logits, _ = half_distances_logits(s, a2[:, None], b[:, None], mask_k[:, None])
        m_q, log2s_q, _m_y, _log2s_y = load_stats(stats_ptr, offs_n, N)
        q = softmax_prob(logits, m_q[None, :], log2s_q[None, :], LOG2E)
        colsum += tl.sum(tl.where(code_mask(offs_n, row_hi, EVEN_N)[None, :], q, 0.0), axis=1)
    tl.store(part_ptr + split * K + offs_k, colsum, mask=mask_k)


def gmvq_fwd(x, means, a, b, v, *, tau, hard, seed, noise, dot_precision, for_backward=True, mm=None, mp=None):
    """Launch the forward. x (N, D) and means (K, D): contiguous, one of fp32/fp16/bf16, same dtype;
    a, b, v (K,) fp32 contiguous (see spec.component_terms); mm = ||μ||² (K,) fp32 (spec.code_sq_norms;
    computed here when None) and mp its norm operand (tiles.code_norm_operand; formed here when None;
    tiles.code_terms forms all five in one launch); noise None or (N, K) contiguous.
    for_backward: False when no backward will follow (no input needs a gradient): y_sums is then skipped.

    Returns (outputs, saved): outputs = ``GMVQOutput`` (quantized (N, D) x.dtype, codes (N,) int64,
    statistics fp32); saved = {"entropy", "codes"} ∪ ``spec.SAVED_FIELDS`` for the backward: stats (N, 4)
    fp32 with columns ``spec.STATS_FIELDS``, hard_idx (N,) int64 the hard sample (None unless ``hard``), y_sums
    (N, D + 2) fp32 the soft sample's sums [Σ_k y μ_k, Σ_k y d a_k, Σ_k y σ_k²] (None unless
    ``for_backward`` and ``delta_from_forward``), x_sq = ||x||² (N,) fp32 and x_parts the column kernels'
    norm operand of it (N, 16) (tiles.row_norm_operand; None without the norm dot; an eager backward
    reuses it). With few row blocks the codebook is split across programs (config.split_codes) and
    ``combine_splits`` forms these from the splits' states."""
    N, D = x.shape
    K = means.shape[0]
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    prec = dot_precision_for(x, dot_precision)
    xk, mk = interpreter_operand(x), interpreter_operand(means)
    check_shared_memory(x.dtype, D, dev)
    cfg = row_config(D, x.dtype, dev)
    splits, codes_per_split = split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, dev)
    with_sums = for_backward and delta_from_forward(x.dtype, hard, D)
    mm = code_sq_norms(means) if mm is None else mm
    mp = code_norm_operand(mm, x.dtype) if mp is None else mp  # None without the norm dot
    xx = torch.empty(N, **f32)
    row_mp = acc_norm_operand(mp, D)
    # the column kernels' rows operand (tiles.row_norm_operand): written beside ||x||² by a forward that
    # takes the norm dot itself; above config.NORM_DOT_MAX_BLOCK_D a launch of its own after it (the
    # store cost that forward 2.5 instructions per element at D = 256: static report)
    xq = None if row_mp is None else norm_operand_buffer(N, dev)
    if splits == 1:
        z = torch.empty_like(x)
        y_sums = torch.empty((N, D + 2), **f32) if with_sums else None
        codes = torch.empty(N, dtype=torch.int64, device=dev)
        lse, lat, s2, ent = (torch.empty(N, **f32) for _ in range(4))
        stats = torch.empty((N, 4), **f32)
        hard_idx = torch.empty(N, dtype=torch.int64, device=dev) if hard else None
        part = part_k = part_z = None
    else:
        z = y_sums = codes = lse = lat = s2 = ent = stats = hard_idx = None
        part = torch.empty((splits, len(PART_FIELDS), N), **f32)
        part_k = torch.empty((splits, 2, N), dtype=torch.int64, device=dev)
        part_z = torch.empty((splits, N, D), **f32) if with_sums or not hard else None
    _gmvq_fwd_kernel[(triton.cdiv(N, cfg.BLOCK_N), splits)](
        xk, mk, a, b, v, mm, row_mp, noise, z, y_sums, codes, lse, lat, s2, ent, stats, hard_idx, xx,
        xq, part, part_k, part_z,
        N, K, D, *seed_args(seed), y_scale(tau), codes_per_split,
        HARD=hard, SPLIT=splits > 1, Y_SUMS=with_sums, OP_DTYPE=TL_DTYPES[x.dtype], DOT_PRECISION=prec,
        NONEMPTY=not serial_wgmma(), LAZY=lazy_rescale_on(x.dtype, hard, with_sums, block_d(D), dev),
        BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, BLOCK_D=block_d(D), **cfg.launch_options(),
    )
    if splits > 1:
        z, codes, lse, lat, s2, ent, stats, hard_idx, y_sums = combine_splits(part, part_k, part_z, x, xx, means, a,
                                                                              v, mm, tau, hard)
        y_sums = y_sums if with_sums else None
    xq = row_norm_operand(xx, mp) if xq is None else xq
    agg = colsum_q(xk, mk, a, b, v, mm, stats, xx, xq, prec)
    outs = GMVQOutput(quantized=z, codes=codes, log_likelihood=lse, agg_posterior=agg, latent_nll=lat,
                      mixture_var=s2, entropy=ent)
    return outs, dict(entropy=ent, stats=stats, hard_idx=hard_idx, codes=codes, y_sums=y_sums, x_sq=xx, x_parts=xq)


def delta_from_forward(dtype, hard, D):
    """Whether the forward keeps the soft sample's sums (y_sums) so that the backward takes
    Δy = Σ_k y Y = Ḡ_z·Σ y μ + Ḡ_lat·Σ y d a + Ḡ_s·Σ y σ² from them (per row, O(N·D)) instead of
    recomputing it in the Δ pass (a pass over N×K that draws the noise again; static report at
    (8192, 1024, 64) bf16: Δ pass 49 → 17 instructions per element, forward +4 soft, +9 hard).

    For half inputs: their gradients are stored in half (2⁻⁹), and with Σ y μ kept fp32-accurate (the
    kernel's p_hi + p_lo split of p_y: 2⁻¹⁷ in bf16) the two ways differ by ~2⁻¹⁷·|μ|/spread relative in
    Y − Δy. fp32 inputs keep the recompute, whose Y − Δy cancels exactly per element: from the forward,
    the CPU tests saw 5e-6 error in dx against a bound of 5e-7 (1e-5 of max|dx|) at K = 1. Hard mode at
    D > 256 keeps it too: there the hard forward (which otherwise forms no soft sums) has no registers
    for a (64, 512) fp32 accumulator (static report at (8192, 4096, 512): spills 3.0 → 10.7 KB, its
    wgmma serialised, 531 → 676 per element; rescanned with the 16-row D = 512 tiles: no spills, but
    forward 157 → 252, Δ 85 → 44, 880 → 932 per element in all, so still not). At D ≤ 256 the sums
    pay (at (65536, 16384, 256): forward 55.1 → 75.6 per element and 40 → 316 B of spills, the soft
    forward's; Δ 46.0 → 14.4; 269.7 → 257.7 per element in all)."""
    return dtype in (torch.float16, torch.bfloat16) and (not hard or D <= 256)


def combine_splits(part, part_k, part_z, x, xx, means, a, v, mm, tau, hard):
    """The forward's row outputs from its splits' running states (the kernel's SPLIT epilogue, in
    torch): each softmax's state is rescaled to the largest split maximum and summed, as the kernel
    does across tiles; codes and hard samples come from the first split holding the maximum (the
    lowest code on ties, as unsplit). The kernel's NaN policy is applied last. Returns (z, codes, lse,
    latent_nll, mixture_var, entropy, stats, hard_idx, y_sums), y_sums None unless part_z is given.
    xx = ||x||² (N,) and mm = ||μ||² (K,) fp32, as the kernel used them."""
    p = dict(zip(PART_FIELDS, part.unbind(1)))  # each (splits, N)
    m_q, m_y = p["m_q"].amax(0), p["m_y"].amax(0)
    shift_q = p["m_q"] - m_q  # ≤ 0: each split's max against the row's
    w_q = torch.exp(shift_q)
    s_q = (w_q * p["s_q"]).sum(0)
    u_q = (w_q * (p["u_q"] + shift_q * p["s_q"])).sum(0)
    w_y = torch.exp2((p["m_y"] - m_y) * y_scale(tau))
    s_y = (w_y * p["s_y"]).sum(0)
    first = lambda m, rows: rows.gather(0, m.argmax(0, keepdim=True))[0]  # noqa: E731
    codes = first(p["m_q"], part_k[:, 0])
    hard_idx = first(p["h_y"], part_k[:, 1]) if hard else None
    log_s_q = torch.log(s_q)
    bad = ~(xx < math.inf)
    nan = lambda t: t.masked_fill(bad if t.dim() == 1 else bad[:, None], math.nan)  # noqa: E731
    y_sums = None
    if part_z is not None:  # the soft sample's sums
        soft = [(w_y[:, :, None] * part_z).sum(0)] + [(w_y * p[f]).sum(0)[:, None] for f in ("acc_lat", "acc_v")]
        y_sums = nan(torch.cat(soft, 1) / s_y[:, None])
    if hard:  # the sample's d·a and σ² from its mean, as the kernel's epilogue forms them
        z = means[hard_idx]
        lat = (xx + mm[hard_idx] - 2.0 * (x.float() * z.float()).sum(1)).clamp_min(0.0) * a[hard_idx]
        s2 = v[hard_idx]
    else:
        D = x.shape[1]
        z, lat, s2 = y_sums[:, :D], y_sums[:, D], y_sums[:, D + 1]
    stats = torch.stack([nan(m_q), torch.log2(s_q), nan(m_y), torch.log2(s_y)], 1)
    return (nan(z.float()).to(x.dtype), codes.masked_fill(bad, -1), nan(m_q + log_s_q), nan(lat), nan(s2),
            nan(log_s_q - u_q / s_q), stats, hard_idx, y_sums)


def colsum_q(x, means, a, b, v, mm, stats, xx, xq, prec):
    """q̄ = Σ_n q_nk / N (K,) fp32 from the forward's final row statistics and ||x||² (xq: its norm operand,
    tiles.row_norm_operand, or None), deterministic."""
    N, D = x.shape
    K = means.shape[0]
    cfg = colsum_config(D, x.dtype, x.device)
    n_col = triton.cdiv(K, cfg.BLOCK_K)
    splits, rows_per_split = split_rows(N, n_col, cfg.BLOCK_N, x.device)
    part = split_parts(splits, K, device=x.device)
    _gmvq_fwd_colsum_kernel[(n_col, splits)](
        x, means, a, b, v, mm, stats, xx, xq, part, N, K, D, rows_per_split, DOT_PRECISION=prec,
        BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, BLOCK_D=block_d(D),
        **cfg.launch_options(),
    )
    # one split: a division (a torch op costs less host time than a launch); several: one launch for
    # their sum and the division
    return part / N if splits == 1 else finish_splits(splits, vecs=(part,), divisor=N)[1][0]
