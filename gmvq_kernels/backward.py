"""Backward kernels of the fused GM-VQ op: recompute, never store N×K (docs/design.md §2).

Per (n, k) every kernel rebuilds d, ℓ, q = softmax(ℓ) and the soft sample y = softmax((ℓ + g)/τ) from
the forward's row statistics (each softmax's max m and log2-sum, exponents (e − m)·scale exactly as
the forward formed them), with the Gumbel noise g regenerated from its counters, then

    Y     = Ḡ_z·μ_k + Ḡ_s σ_k² + Ḡ_lat d a_k                   (only with Ḡ_z, Ḡ_s or Ḡ_lat)
    dℓ    = (y/τ)(Y − Δy) + q [Ḡ_lse + Ḡ_c[k] − Δq − Ḡ_H (log q + H)]
    w     = Ḡ_lat·y_val − dℓ,      dd = a_k·w  (0 where the distance clamp was active)

with Ḡ_c = Ḡ_q̄ / N the gradient of the column sum of q, and the row sums Δy = Σ_k y Y and
Δq = Σ_k q Ḡ_c[k] from ``_gmvq_bwd_delta_kernel`` (one pass: the analogue of FlashAttention's Delta).
For half inputs Δy comes from the forward's fp32 soft sums instead (Ḡ_z·Σ y μ + Ḡ_lat·Σ y d a +
Ḡ_s·Σ y σ², read by the same kernel; see forward.delta_from_forward for when and why), and that pass
computes Δq alone: no noise. At D ≤ 64 (a q̄ gradient given; 128 on sm_90 with ``GMVQ_DEFER_DQ_128=1``,
an A/B for a GPU) the dx kernel takes that Δq too (``defer_delta_q``) and the pass does not run. For fp32
inputs it recomputes Δy, so that Y − Δy
cancels exactly (from the forward: 5e-6 error in dx at K = 1 against fp32's bound of 5e-7); at τ = 1
(tiles.tau_one) as the mean Σ_k y Y / Σ_k y of the very y the other kernels form. That y =
q·(1/log₂ u)·c is a product of three roundings, so it sums to 1 only to an ulp even where one code
holds the whole sample (the sample's own softmax is exactly 1 at its maximum there), and Y − Δy then
left ~10⁻⁷·|Y| per row, which d log σ² multiplies by d·a − D/2 (tests/random_sweep.py, seed 37: 3.8×
fp32's bound). Not at another τ: where the distances' expansion cancels (latents far from the origin
against their spread) the backward's logits differ from the forward's statistics by more than that,
and the same division took two cases of that sweep past the bound that passed without it.
y_val is y, or the one-hot hard sample in hard mode (whose terms dx adds once per row after its loop
at D ≤ 128, and dμ over each code's own rows after its loop from config.HARD_ROWS_MIN_BLOCKS code
blocks on: ``hard_rows``). Then (a, v as in spec.component_terms):

    dx_n = 2 (x_n Σ_k dd − Σ_k dd μ_k)                     ``_gmvq_bwd_dx_kernel``  (row blocks ×
                                                             code splits at large K and small N; torch
                                                             adds the splits and forms dx)
    dμ_k = 2 (μ_k Σ_n dd − Σ_n dd x_n) + Σ_n y_val Ḡ_z      ``_gmvq_bwd_dmu_kernel`` (column blocks ×
    dλ_k = Σ_n [dℓ (d a − D/2) − Ḡ_lat y_val d a + Ḡ_s y_val σ²]   row splits, partial sums added
    d(log π_k) = Σ_n dℓ                                              by torch; log_softmax's backward
                                                                     turns the last into dρ)

The column kernel works on transposed (codes × rows) tiles, as FlashAttention-2's dK/dV kernel does:
its sums over rows then stay inside a warp (no shared-memory reduction per tile), and the dots
ddᵀ·x and y_valᵀ·Ḡ_z take the tile as it lies.

Names: the kernels use the symbols of docs/design.md §2, the Python layers the output names —
Ḡ_z gz ↔ quantized, Ḡ_lse glse ↔ log_likelihood, Ḡ_q̄ (gc = Ḡ_q̄/N) ↔ agg_posterior, Ḡ_lat glat ↔
latent_nll, Ḡ_s gs ↔ mixture_var, Ḡ_H gh ↔ entropy; a, b, v are the per-code constants of
spec.component_terms (v = σ², per code; s² is the per-row mixture_var).

Absent upstream gradients arrive as None pointers: their loads, dots and terms vanish from the kernels
(``if ptr is None`` is resolved at compile time). The y terms exist when any of Ḡ_z, Ḡ_lat, Ḡ_s does.
FLOPs, in units of N·K·D: delta 2 (+2 with Ḡ_z), dx 4 (+2 with Ḡ_z), dμ 4 (+4 with Ḡ_z).
"""
import torch
import triton
import triton.language as tl

from .config import (HARD_ROWS_MIN_BLOCKS, block_d, col_config, defer_dq_max_block_d, delta_config, row_config,
                     serial_wgmma, split_codes, split_rows)
from .noise import kernel_seed, seed_args
from .spec import DIFF_OUTPUTS, code_sq_norms
from .tiles import (LN2, LOG2E, N_ROW, R_CY, R_DQ, R_DY, R_ENT, R_GH, R_GLAT, R_GLSE, R_GS, R_LOG2SQ, R_LOG2SY,
                    R_MQ, R_MY, TL_DTYPES, acc_norm_operand, code_mask, code_norm_operand, code_row_distance,
                    col_half_distance, dot_precision_for, even_k, even_n, finish_splits, half_distances_logits,
                    half_row_operand, heuristics, in_first_split, interpreter_operand, load_block, load_codes,
                    load_columns, load_row_record, load_row_vec, load_rows, load_stats, mma, noise_tile,
                    nonempty_range, row_block_offsets, row_half_logits, row_norm_operand, row_operands, row_tile,
                    sample_prob, sample_scale, softmax_log2prob, softmax_prob, split_code_range, split_hi_lo,
                    split_parts, split_row_range, sum_splits, tau_one, tile_code, wide_codes, y_scale)


def has_y_grads(args):
    """triton.heuristics rule: an upstream gradient reaches y (Ḡ_z, Ḡ_lat or Ḡ_s)."""
    return any(args[p] is not None for p in ("gz_ptr", "glat_ptr", "gs_ptr"))


RULES = {"EVEN_K": even_k, "EVEN_N": even_n, "HAS_Y": has_y_grads, "TAU_ONE": tau_one}
HEURISTICS = heuristics(RULES)
DX_HEURISTICS = heuristics({**RULES, "WIDE_CODES": wide_codes})  # a row kernel: tiles.code_index
# the Δ kernel recomputes y only when the forward kept no sums for Δy (ysum_ptr None)
DELTA_HEURISTICS = heuristics({**RULES, "WIDE_CODES": wide_codes,
                               "HAS_Y": lambda args: args["ysum_ptr"] is None and has_y_grads(args)})


@triton.jit
def grad_logits(q, log2_q, y_tau, big_y, y_val, delta_y, delta_q, ent, g_lse, g_h, g_lat, g_c, valid,
                HAS_Y: tl.constexpr, HAS_GLSE: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr,
                HAS_GLAT: tl.constexpr):
    """(dℓ, w) of a tile (see the module docstring), with y_tau = y/τ. All operands broadcast to the
    tile."""
    dl = tl.zeros(q.shape, tl.float32)
    if HAS_Y:
        dl += y_tau * (big_y - delta_y)
    if HAS_GLSE:
        dl += q * g_lse
    if HAS_GC:
        dl += q * (g_c - delta_q)
    if HAS_GH:
        # log q in the forward's own terms: exactly 0 where q = 1 (e.g. K = 1), unlike ℓ − lse
        dl -= q * g_h * tl.where(valid, log2_q * LN2 + ent, 0.0)
    # one FFMA with Ḡ_lat: Triton negates a float as 0 − x, so w = −dℓ first would cost an FADD
    w = g_lat * y_val - dl if HAS_GLAT else -dl
    return dl, w


@triton.jit
def load_row_block(x_ptr, xx_ptr, gz_ptr, offs_n, N, D, offs_d, NORM_DOT: tl.constexpr):
    """The row kernels' tiles: x (BLOCK_N, BLOCK_D) and xp as tiles.row_tile takes them (tiles.row_operands:
    with NORM_DOT, −2x and the norm operand of ||x||², formed as the forward formed it), the forward's
    ||x||² (xx (N,) fp32, so that every pass forms the same distances), and Ḡ_z (the x tile again, never
    read, when Ḡ_z is absent)."""
    x = load_rows(x_ptr, offs_n, N, D, offs_d)
    xx = tl.load(xx_ptr + offs_n, mask=offs_n < N, other=0.0)
    x, xp = row_operands(x, xx, NORM_DOT)
    gz = x
    if gz_ptr is not None:
        gz = load_rows(gz_ptr, offs_n, N, D, offs_d)
    return x, xx, xp, gz


@triton.jit
def ones_column(ROWS: tl.constexpr, ptr):
    """(ROWS, 16) in the element type of ``ptr``, ones in column 0 and zeros elsewhere (see add_row_sums)."""
    return (tl.zeros((ROWS, 16), tl.int32) + (tl.arange(0, 16)[None, :] == 0)).to(ptr.dtype.element_ty)


@triton.jit
def add_row_sums(acc, t, ones, DOT_PRECISION: tl.constexpr):
    """acc + the row sums of t (the tile another dot takes, rounded to x's dtype, so that x Σ dd − Σ dd μ
    cancels a common offset of x and μ exactly: an fp32 sum of the unrounded tile left 2⁻⁹·offset/spread
    in dx). acc (R, 16) fp32: tl.dot(t, ones) puts the sums in column 0 (zeros elsewhere; reduce with
    tl.sum(acc, axis=1)), on the tensor cores (a 64×16 HGMMA) instead of FADDs and shuffles per element:
    −4 instructions per element in dx at D = 64. acc (R, 1): a plain fp32 sum, for fp32 inputs (their
    dot would be FFMA loops or tf32 splits) and where the 8 more registers would spill."""
    if acc.shape[1] == 1:
        acc += tl.sum(t.to(tl.float32), axis=1, keep_dims=True)
    else:
        acc = tl.dot(t, ones, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def gather_rows(ptr, offs_n, in_seg, D, offs_d):
    """A (BLOCK_N, BLOCK_D) tile of rows ``offs_n`` (any order) of an (N, D) tensor, zeros where not in_seg."""
    return tl.load(ptr + offs_n[:, None] * D + offs_d[None, :], mask=in_seg[:, None] & (offs_d[None, :] < D),
                   other=0.0)


@triton.jit
def add_e_terms(acc, e_col, e, x, ones, OP_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(acc + eᵀ·x, e_col + Σ_n e) of a column kernel's (codes × rows) tile e = −2 dd (fp32) and rows x.
    Half inputs: e enters the dot as e_hi + e_lo, two tiles of x's dtype (tiles.split_hi_lo, within 2⁻¹⁷;
    e rounded alone left dμ 2⁻⁹ of Σ_n |e|·|x − μ|, which the Ḡ_z term can cancel down to below that: 1.3
    bf16 ulps off at N = 1), and Σ_n e is taken of the same values, so that μ Σ e − Σ e x cancels a
    common offset of x and μ exactly (an fp32 sum beside e rounded alone left 2⁻⁹·offset/spread);
    e_col (BLOCK_K, 1) takes the fp32 tile instead (fp32 inputs, or where 16 columns would spill: within
    2⁻¹⁷ of e_hi + e_lo)."""
    if OP_DTYPE != tl.float32:
        e_hi, e_lo = split_hi_lo(e, OP_DTYPE)
        acc = tl.dot(e_hi.to(x.dtype), x, acc, input_precision=DOT_PRECISION)
        acc = tl.dot(e_lo.to(x.dtype), x, acc, input_precision=DOT_PRECISION)
        if e_col.shape[1] == 1:
            e_col = add_row_sums(e_col, e, ones, DOT_PRECISION)
        else:
            e_col = add_row_sums(e_col, e_hi.to(x.dtype), ones, DOT_PRECISION)
            e_col = add_row_sums(e_col, e_lo.to(x.dtype), ones, DOT_PRECISION)
    else:
        acc = mma(e, x, acc, DOT_PRECISION, True)
        e_col = add_row_sums(e_col, e, ones, DOT_PRECISION)
    return acc, e_col


@triton.jit
def delta_y_from_sums(ysum_ptr, gz_ptr, g_lat, g_s, offs_n, mask_n, D, BLOCK_D: tl.constexpr,
                      HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr):
    """Δy = Ḡ_z·Σ y μ + Ḡ_lat·Σ y d a + Ḡ_s·Σ y σ² of BLOCK_N rows from the forward's y_sums (N, D + 2)
    fp32 (forward.delta_from_forward) and Ḡ_z (N, D) (gz_ptr, or None). Ḡ_z·Σ y μ in column chunks of at
    most 64, read from memory: the whole (BLOCK_N, BLOCK_D) fp32 sums beside the Ḡ_z tile held 192
    registers per thread at BLOCK_D = 256 after the Δ kernel's loop, which set that kernel's register
    count (static report)."""
    row = ysum_ptr + offs_n * (D + 2)
    delta_y = tl.zeros(offs_n.shape, tl.float32)
    if gz_ptr is not None:
        CHUNK: tl.constexpr = 64 if BLOCK_D > 64 else BLOCK_D
        for d_start in range(0, D, CHUNK):
            cols = d_start + tl.arange(0, CHUNK)
            mask = mask_n[:, None] & (cols[None, :] < D)
            z = tl.load(row[:, None] + cols[None, :], mask=mask, other=0.0)
            gz = tl.load(gz_ptr + offs_n[:, None] * D + cols[None, :], mask=mask, other=0.0)
            delta_y += tl.sum(gz.to(tl.float32) * z, axis=1)
    if HAS_GLAT:
        delta_y += g_lat * tl.load(row + D, mask=mask_n, other=0.0)
    if HAS_GS:
        delta_y += g_s * tl.load(row + D + 1, mask=mask_n, other=0.0)
    return delta_y


@triton.jit
def upstream_value(da, v, g_lat, g_s, shift, HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr):
    """Y's scalar terms Ḡ_lat d a + Ḡ_s σ² of a tile (operands broadcast to it), each only when its
    gradient exists: an absent one would still cost an FFMA per element (0·σ² is not foldable), minus
    ``shift`` (Δy, or 0.0, which folds away): the Ḡ_z dot then accumulates onto Y − Δy, and dℓ's
    y·(Y − Δy) saves its subtraction (static report: −1 per element)."""
    big_y = g_lat * da - shift if HAS_GLAT else tl.zeros(da.shape, tl.float32) - shift
    if HAS_GS:
        big_y += g_s * v
    return big_y


@triton.jit
def col_upstream(da, v, g_lat, g_s, delta_y, gz_ptr, mu, offs_n, row_hi, D, offs_d, SHIFT_Y: tl.constexpr,
                 HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(Y − Δy or Y, Ḡ_z rows) of a column kernel's (codes × rows) tile: upstream_value with its Ḡ_z·μ_k
    dot, minus the rows' Δy when SHIFT_Y (half inputs); and the Ḡ_z tile for the y_valᵀ·Ḡ_z dot (μ,
    unread, without Ḡ_z)."""
    shift = delta_y[None, :] if SHIFT_Y else 0.0
    big_y = upstream_value(da, v[:, None], g_lat[None, :], g_s[None, :], shift, HAS_GLAT, HAS_GS)
    gz = mu
    if gz_ptr is not None:
        gz = load_rows(gz_ptr, offs_n, row_hi, D, offs_d)
        big_y = mma(mu, tl.trans(gz), big_y, DOT_PRECISION, False)
    return big_y, gz


@triton.jit
def row_sample(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, logits, valid, q, c_y, d, a, v, mu, gz,
               m_y, log2s_y, y_scale, log2_gain, g_lat, g_s, shift, TAU_ONE: tl.constexpr, HAS_GZ: tl.constexpr,
               HAS_GLAT: tl.constexpr, HAS_GS: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(y·2^log2_gain, Y − shift) of a row tile: the soft sample, recomputed from the forward's statistics
    (``log2s_y`` lowered by log2_gain: see tiles.softmax_prob), and the upstream value
    Y = Ḡ_z·μ + Ḡ_s σ² + Ḡ_lat d a of each of its entries (``gz`` unused unless HAS_GZ) less a per-row
    shift (upstream_value). The Δ and dx kernels call this one helper with shift 0.0 where Δy is
    recomputed, so their Y agree bit for bit. TAU_ONE: y from the tile's q and the rows' c_y
    (tiles.sample_scale, with the same lowered log2s_y) instead of ℓ + g (tiles.sample_prob)."""
    if TAU_ONE:
        y = sample_prob(q, noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K,
                                      INV_LOG2U=True), c_y[:, None])
    else:
        g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K)
        noisy = tl.where(valid, logits + g, float("-inf"))
        y = softmax_prob(noisy, m_y[:, None], log2s_y[:, None], y_scale, log2_gain)
    big_y = upstream_value(d * a[None, :], v[None, :], g_lat[:, None], g_s[:, None], shift, HAS_GLAT, HAS_GS)
    if HAS_GZ:
        big_y = mma(gz, tl.trans(mu), big_y, DOT_PRECISION, True)
    return y, big_y


@DELTA_HEURISTICS
@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_delta_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, mp_ptr, noise_ptr, stats_ptr, xx_ptr,
    gz_ptr, glat_ptr, gs_ptr, gc_ptr, ysum_ptr, delta_y_ptr, y_mass_ptr, delta_q_ptr,
    N, K, D, seed_lo, seed_hi, seed_ptr, y_scale, codes_per_split,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, HAS_Y: tl.constexpr,
    TAU_ONE: tl.constexpr, HALF: tl.constexpr, WIDE_CODES: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Δy = Σ_k y Y and Δq = Σ_k q Ḡ_c[k] per row, over the codes of one split (program_id(1), see
    config.split_codes): delta_y, delta_q (splits, N) fp32, each only when its gradients exist; torch
    adds the splits. With y_mass (splits, N) (not None only where the loop recomputes y, at τ = 1) also
    Σ_k y, by which the launcher divides Δy (the module docstring). gz (N, D) in x's dtype, glat, gs (N,)
    and gc = Ḡ_q̄/N (K,) fp32, or None.
    y and Y are per element what the dx kernel computes (same helper, same tiles), so Y − Δy cancels
    as exactly as in softmax's backward. With the forward's y_sums (N, D + 2) fp32 (ysum_ptr, see
    forward.delta_from_forward) Δy = Ḡ_z·Σ y μ + Ḡ_lat·Σ y d a + Ḡ_s·Σ y σ² comes from them instead
    (split 0 writes it, the others 0) and the loop computes Δq alone."""
    seed_lo, seed_hi = kernel_seed(seed_lo, seed_hi, seed_ptr)
    split, k_lo, k_hi = split_code_range(codes_per_split, K)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    # HALF (Δq alone with the norm dot, the launcher's choice): the logits from the halved distances, x in
    # shared memory as loaded (tiles.row_half_logits; a_ptr holds 2a): 128 registers at BLOCK_D = 128 and
    # 256, 16 warps per SM
    tl.static_assert(not HALF or (not HAS_Y and mp_ptr is not None), "HALF: Δq alone, with the norm dot")
    x, xx, xp, gz = load_row_block(x_ptr, xx_ptr, gz_ptr if HAS_Y else None, offs_n, N, D, offs_d,
                                   mp_ptr is not None and not HALF)
    if HALF:
        xp = half_row_operand(xx, x)
    g_lat = load_row_vec(glat_ptr, offs_n, N)
    g_s = load_row_vec(gs_ptr, offs_n, N)
    m_q, log2s_q, m_y, log2s_y = load_stats(stats_ptr, offs_n, N)
    c_y = sample_scale(m_q, log2s_q, m_y, log2s_y) if TAU_ONE else m_y  # m_y: unread
    delta_y = tl.zeros((BLOCK_N,), tl.float32)
    y_mass = tl.zeros((BLOCK_N,), tl.float32)
    delta_q = tl.zeros((BLOCK_N,), tl.float32)
    for k_start in range(k_lo, k_hi, BLOCK_K):
        if HALF:
            offs_k, mask_k, logits = row_half_logits(x, xp, means_ptr, a_ptr, b_ptr, mp_ptr, k_start, K, D, offs_d,
                                                     EVEN_K, BLOCK_K, DOT_PRECISION, WIDE_CODES)
        else:
            offs_k, mask_k, mu, a, v, d, logits, _clamp = row_tile(x, xx, xp, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr,
                                                                   mp_ptr, k_start, K, D, offs_d, EVEN_K, BLOCK_K,
                                                                   DOT_PRECISION, WIDE_CODES)
        valid = mask_k[None, :]
        q = logits  # placeholder when neither Δq nor y at τ = 1 takes it (never used then)
        if gc_ptr is not None or (HAS_Y and TAU_ONE):
            q = softmax_prob(logits, m_q[:, None], log2s_q[:, None], LOG2E)
        if gc_ptr is not None:
            g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0)
            delta_q += tl.sum(q * g_c[None, :], axis=1)
        if HAS_Y:
            y, big_y = row_sample(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, logits, valid, q, c_y,
                                  d, a, v, mu, gz, m_y, log2s_y, y_scale, 0.0, g_lat, g_s, 0.0, TAU_ONE,
                                  gz_ptr is not None, glat_ptr is not None, gs_ptr is not None, BLOCK_K,
                                  DOT_PRECISION)
            delta_y += tl.sum(y * big_y, axis=1)
            if y_mass_ptr is not None:
                y_mass += tl.sum(y, axis=1)
    if y_mass_ptr is not None:
        tl.static_assert(HAS_Y, "Σ_k y where the loop forms y")
        tl.store(y_mass_ptr + split * N + offs_n, y_mass, mask=mask_n)
    if ysum_ptr is not None:
        delta_y += delta_y_from_sums(ysum_ptr, gz_ptr, g_lat, g_s, offs_n, mask_n, D, BLOCK_D, glat_ptr is not None,
                                     gs_ptr is not None)
        delta_y = tl.where(split == 0, delta_y, 0.0)
    if HAS_Y or ysum_ptr is not None:
        tl.store(delta_y_ptr + split * N + offs_n, delta_y, mask=mask_n)
    if gc_ptr is not None:
        tl.store(delta_q_ptr + split * N + offs_n, delta_q, mask=mask_n)


@DX_HEURISTICS
@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_dx_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, mp_ptr, noise_ptr, stats_ptr, xx_ptr, ent_ptr, hard_idx_ptr,
    delta_y_ptr, delta_q_ptr, gz_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, gc_ptr,
    dd_part_ptr, acc_part_ptr, ysum_ptr, codes_ptr, qa_part_ptr, qamu_part_ptr, rec_ptr,
    N, K, D, seed_lo, seed_hi, seed_ptr, inv_tau, y_scale, codes_per_split,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, HAS_Y: tl.constexpr,
    TAU_ONE: tl.constexpr, OP_DTYPE: tl.constexpr, NONEMPTY: tl.constexpr, WIDE_CODES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The two sums behind dx = 2 (x Σ_k dd − Σ_k dd μ_k) for BLOCK_N rows over the codes of one split
    (program_id(1), see config.split_codes): dd_part (splits, N) and acc_part (splits, N, D) fp32; the
    launcher adds the splits and forms dx. (That epilogue in the kernel, with x reloaded, cost spills:
    bf16 D = 256 soft 104 → 404 B, D = 128 hard 8 → 56 B in the static report.) mp (K, 16): the codes'
    norm operand, or None (tiles.row_tile; as in the Δ kernel). ent (N,) and stats
    (N, 4) from the forward; hard_idx (N,) int64 the hard sample in hard mode, else None (its Ḡ_lat·a
    term is added per row after the loop at BLOCK_D ≤ 128, a one-hot in the loop at 256); delta_y /
    delta_q (N,) from the delta kernel; upstream gradients gz (N, D), glse, gh, glat, gs (N,) fp32,
    gc = Ḡ_q̄/N (K,) fp32, each or None. inv_tau = 1/τ, y_scale = log2(e)/τ. OP_DTYPE: x's dtype, which
    the tiles entering a dot are rounded to by name (a no-op on a GPU, where μ has it; the interpreter's
    operands are fp32). NONEMPTY: the loop's range is declared non-empty (tiles.nonempty_range; False
    only for config.serial_wgmma's side-by-side timing).

    With codes (N,) int64, the forward's argmax codes (``defer_delta_q``), the kernel replaces the Δ
    pass. Δq is unknown until a row's codes are all seen, so the loop runs with a stand-in c_n = Ḡ_c at
    the row's argmax code and also sums r = Δq − c_n = Σ_k q (Ḡ_c − c_n), Σ_k a q and Σ_k a q μ_k (masked
    as dd), whose r-multiples are the a·q·r that dd left out. Near that code q (Ḡ_c − c_n) is small, so
    neither dot carries a large Ḡ_c into half precision. With one split the kernel adds them itself;
    with several it stores Σ_k a q and Σ_k a q μ_k into qa_part (splits, N) and qamu_part
    (splits, N, D) and the launcher adds them. delta_q (splits, N) is then an output: each split's r,
    plus c_n in split 0, so that the splits sum to Δq. Δy comes from the forward's y_sums (ysum_ptr,
    when an upstream gradient reaches y).

    TAU_ONE (τ = 1, the noise drawn here: ``tiles.tau_one``): y = q·(1/log₂ u)·c (tiles.sample_prob).

    rec (N, 12) fp32: split 0 writes each row's values the dμ kernel takes (tiles.R_MQ .. R_ENT, those
    that exist: the forward's statistics, Δy where a gradient reaches y, c where y is formed at τ = 1,
    the upstream Ḡ_lat, Ḡ_s, Ḡ_lse, Ḡ_H, H where Ḡ_H is given, and Δq once final here: not with DEFER
    and several splits)."""
    seed_lo, seed_hi = kernel_seed(seed_lo, seed_hi, seed_ptr)
    split, k_lo, k_hi = split_code_range(codes_per_split, K)
    k_lo, k_hi = nonempty_range(k_lo, k_hi, NONEMPTY)
    DEFER_DQ: tl.constexpr = codes_ptr is not None
    # Δy from the forward's sums (ysum_ptr given): no Δ pass's Y to agree with bit for bit, so the loop
    # forms Y − Δy directly (upstream_value)
    SHIFT_Y: tl.constexpr = ysum_ptr is not None
    # add_row_sums's accumulator width (static report: 16 at BLOCK_D = 256 spills 32 B more)
    SUMS: tl.constexpr = 16 if OP_DTYPE != tl.float32 and BLOCK_D <= 128 else 1
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    x, xx, xp, gz = load_row_block(x_ptr, xx_ptr, gz_ptr, offs_n, N, D, offs_d, mp_ptr is not None)
    m_q, log2s_q, m_y, log2s_y = load_stats(stats_ptr, offs_n, N)
    ent = load_row_vec(ent_ptr if gh_ptr is not None else None, offs_n, N)
    g_lse = load_row_vec(glse_ptr, offs_n, N)
    g_h = load_row_vec(gh_ptr, offs_n, N)
    g_lat = load_row_vec(glat_ptr, offs_n, N)
    g_s = load_row_vec(gs_ptr, offs_n, N)
    if DEFER_DQ:  # the stand-in c_n (code −1, a non-finite row, takes code 0: its row is NaN anyway)
        code = tl.maximum(tl.load(codes_ptr + offs_n, mask=mask_n, other=0), 0)
        delta_q = tl.load(gc_ptr + code, mask=mask_n, other=0.0)
        dq_rel = tl.zeros((BLOCK_N,), tl.float32)
        qa_sum = tl.zeros((BLOCK_N, SUMS), tl.float32)
        qa_mu = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        if ysum_ptr is not None:
            delta_y = delta_y_from_sums(ysum_ptr, gz_ptr, g_lat, g_s, offs_n, mask_n, D, BLOCK_D, glat_ptr is not None,
                                        gs_ptr is not None)
        else:
            delta_y = tl.zeros((BLOCK_N,), tl.float32)  # no y gradient: unread
    else:
        delta_y = load_row_vec(delta_y_ptr, offs_n, N)
        delta_q = load_row_vec(delta_q_ptr, offs_n, N)
    # y/τ straight from the exp (its log2 sum lowered by log2(1/τ), a per-row constant): one multiply per
    # element less; w's Ḡ_lat·y then weighs it by Ḡ_lat·τ (soft mode; the hard one-hot by Ḡ_lat)
    log2_inv_tau = tl.log2(inv_tau)
    log2s_y_tau = log2s_y - log2_inv_tau
    c_y = sample_scale(m_q, log2s_q, m_y, log2s_y_tau) if TAU_ONE else m_y  # m_y: unread
    # the dμ kernel's per-row values (c: its per-tile rows would each take an exp2; τ = 1: y/τ = y)
    row_rec = rec_ptr + offs_n * N_ROW
    first = in_first_split(mask_n, split)
    tl.store(row_rec + R_MQ, m_q, mask=first)
    tl.store(row_rec + R_LOG2SQ, log2s_q, mask=first)
    if not TAU_ONE:
        tl.store(row_rec + R_MY, m_y, mask=first)
        tl.store(row_rec + R_LOG2SY, log2s_y, mask=first)
    if HAS_Y:
        tl.store(row_rec + R_DY, delta_y, mask=first)
        if TAU_ONE:
            tl.store(row_rec + R_CY, c_y, mask=first)
    if gc_ptr is not None and not DEFER_DQ:
        tl.store(row_rec + R_DQ, delta_q, mask=first)
    if glat_ptr is not None:
        tl.store(row_rec + R_GLAT, g_lat, mask=first)
    if gs_ptr is not None:
        tl.store(row_rec + R_GS, g_s, mask=first)
    if glse_ptr is not None:
        tl.store(row_rec + R_GLSE, g_lse, mask=first)
    if gh_ptr is not None:
        tl.store(row_rec + R_GH, g_h, mask=first)
        tl.store(row_rec + R_ENT, ent, mask=first)
    # hard mode at BLOCK_D ≤ 128 adds the one-hot sample's Ḡ_lat·a term once per row after the loop (at 256
    # the epilogue's (BLOCK_N, D) μ tile would spill the accumulator into the loop: static report)
    ROW_TERM: tl.constexpr = hard_idx_ptr is not None and glat_ptr is not None and BLOCK_D <= 128
    # w = Ḡ_lat·y_val − dℓ in the loop: soft (y/τ weighed by Ḡ_lat·τ) or the hard one-hot
    W_LAT: tl.constexpr = glat_ptr is not None and not ROW_TERM
    if hard_idx_ptr is not None:
        if W_LAT:
            hard_idx = tl.load(hard_idx_ptr + offs_n, mask=mask_n, other=-1)
        g_lat_w = g_lat
    else:
        g_lat_w = g_lat * (1.0 / inv_tau)

    dd_sum = tl.zeros((BLOCK_N, SUMS), tl.float32)
    ones = ones_column(BLOCK_K, means_ptr)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for k_start in range(k_lo, k_hi, BLOCK_K):
        offs_k, mask_k, mu, a, v, d, logits, clamp_ok = row_tile(x, xx, xp, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr,
                                                                 mp_ptr, k_start, K, D, offs_d, EVEN_K, BLOCK_K,
                                                                 DOT_PRECISION, WIDE_CODES)
        valid = mask_k[None, :]
        log2_q = softmax_log2prob(logits, m_q[:, None], log2s_q[:, None], LOG2E)
        q = tl.exp2(log2_q)
        y_tau = q  # placeholder when no y gradient (never used then)
        big_y = q
        if HAS_Y:
            y_tau, big_y = row_sample(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, logits, valid, q,
                                      c_y, d, a, v, mu, gz, m_y, log2s_y_tau, y_scale, log2_inv_tau, g_lat, g_s,
                                      delta_y[:, None] if SHIFT_Y else 0.0, TAU_ONE, gz_ptr is not None,
                                      glat_ptr is not None, gs_ptr is not None, BLOCK_K, DOT_PRECISION)
        y_val = y_tau  # with g_lat·τ as its weight (soft)
        if hard_idx_ptr is not None and W_LAT:
            y_val = (tl.arange(0, BLOCK_K)[None, :] == tile_code(hard_idx, k_start, BLOCK_K)[:, None]).to(tl.float32)
        g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0) if gc_ptr is not None else a  # a: unread
        dl, w = grad_logits(q, log2_q, y_tau, big_y, y_val, 0.0 if SHIFT_Y else delta_y[:, None], delta_q[:, None],
                            ent[:, None], g_lse[:, None], g_h[:, None], g_lat_w[:, None], g_c[None, :], valid,
                            HAS_Y, glse_ptr is not None, gh_ptr is not None, gc_ptr is not None, W_LAT)
        # without the Ḡ_lat term dd = dℓ·(−a), a per-code negation: w = −dℓ is 0 − dℓ in Triton, an FADD
        dd = w * a[None, :] if W_LAT else dl * (-a)[None, :]
        # Σ_k dd of the very values the dot takes (rounded to x's dtype): x Σ dd − Σ dd μ then cancels a
        # common offset of x and μ exactly (latents far from the origin; an fp32 sum left 2⁻⁹·offset/spread)
        dd = tl.where(clamp_ok & valid, dd, 0.0).to(OP_DTYPE).to(mu.dtype)
        dd_sum = add_row_sums(dd_sum, dd, ones, DOT_PRECISION)
        acc = mma(dd, mu, acc, DOT_PRECISION, True)
        if DEFER_DQ:
            dq_rel += tl.sum(q * (g_c[None, :] - delta_q[:, None]), axis=1)
            qa = tl.where(clamp_ok & valid, q * a[None, :], 0.0).to(OP_DTYPE).to(mu.dtype)
            qa_sum = add_row_sums(qa_sum, qa, ones, DOT_PRECISION)
            qa_mu = mma(qa, mu, qa_mu, DOT_PRECISION, True)

    mask_nd = mask_n[:, None] & (offs_d[None, :] < D)
    nd = row_block_offsets(BLOCK_N, D, offs_d)
    dd_sum = tl.sum(dd_sum, axis=1)
    if ROW_TERM:
        # the hard sample's Ḡ_lat·a_h at its code h (where the distance clamp passes gradient), in fp32,
        # once per row (split 0) instead of a one-hot in every tile (static report: −3.2 per element at
        # D = 64); h and x loaded here rather than kept live across the loop (D = 128: 60 and 172 B of spills)
        h = tl.load(hard_idx_ptr + offs_n, mask=mask_n, other=0)
        mu_h, d_raw = code_row_distance(x_ptr, means_ptr, mm_ptr, h, xx, nd, mask_nd, D, offs_d)
        mu_h = mu_h.to(tl.float32)
        dd_h = tl.where((d_raw >= 0.0) & (split == 0), g_lat * tl.load(a_ptr + h, mask=mask_n, other=0.0), 0.0)
        dd_sum += dd_h
        acc += dd_h[:, None] * mu_h
    if DEFER_DQ:
        qa_sum = tl.sum(qa_sum, axis=1)
        if qamu_part_ptr is None:  # one split: r is complete here
            # qa ≥ 0, so Σ a q = 0 only where every term is masked (a non-finite row, whose r is NaN):
            # there dd has no term to correct, and dx stays what the Δ pass would give
            r = tl.where(qa_sum == 0.0, 0.0, dq_rel)
            dd_sum += r * qa_sum
            acc += r[:, None] * qa_mu
            tl.store(row_rec + R_DQ, dq_rel + delta_q, mask=mask_n)  # Δq, as delta_q's one split holds it
        else:
            tl.store(qa_part_ptr + split * N + offs_n, qa_sum, mask=mask_n)
            tl.store(qamu_part_ptr + split * N * D + nd, qa_mu, mask=mask_nd)
        tl.store(delta_q_ptr + split * N + offs_n, dq_rel + tl.where(split == 0, delta_q, 0.0), mask=mask_n)
    tl.store(dd_part_ptr + split * N + offs_n, dd_sum, mask=mask_n)
    tl.store(acc_part_ptr + split * N * D + nd, acc, mask=mask_nd)


@HEURISTICS
@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _gmvq_bwd_dmu_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, noise_ptr, xx_ptr, xp_ptr, hard_idx_ptr, delta_q_ptr,
    gz_ptr, glse_ptr, gh_ptr, glat_ptr, gs_ptr, gc_ptr, acc_part_ptr, esum_part_ptr, dlv_part_ptr, dlp_part_ptr,
    hard_perm_ptr, hard_off_ptr, rec_ptr,
    N, K, D, half_d, seed_lo, seed_hi, seed_ptr, inv_tau, y_scale, rows_per_split,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, HAS_Y: tl.constexpr,
    TAU_ONE: tl.constexpr, OP_DTYPE: tl.constexpr, NONEMPTY: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The partial sums behind dμ = acc − μ Σ_n e of BLOCK_K codes over one split of rows
    (program_id(1)): acc = Σ_n e x + Σ_n y_val Ḡ_z into acc_part (splits, K, D) and Σ_n e into esum_part
    (splits, K), with e = −2 dd; and d log_var, d log π into dlv_part, dlp_part (splits, K), all fp32.
    The launcher adds the splits and forms dμ: the μ·Σ e epilogue in the kernel, with μ reloaded, made
    ptxas spill (static report: 44 / 180 B at D = 128 soft / hard, 972 / 1116 B at 256, against 0 / 0
    and 476 / 612 B without it). Arguments as for the dx kernel (less stats, ent and delta_y: rec holds them),
    half_d = D/2, but instead of mp the rows' norm operand xp (N, 16) or None (tiles.col_half_distance
    forms the codes' in registers). Tiles are transposed (codes × rows): per-code vectors broadcast as
    v[:, None], per-row ones as v[None, :].

    With hard_perm (N,) int64, the rows sorted by their hard code (stable), and hard_off (K + 1,) int64,
    the position in that order of each code's first row (``hard_rows``), the hard one-hot sample stays
    out of the loop: its terms (Ḡ_lat·y_val in w, y_valᵀ·Ḡ_z, Σ Ḡ_s y_val) are all at (h_n, n), so the
    splits add them after the loop over the rows whose code lies in their block only, each an equal
    share in whole tiles (O(N·BLOCK_K) work in all, in a fixed order: deterministic).

    TAU_ONE (``tiles.tau_one``): y = q·(1/log₂ u)·c (tiles.sample_prob).

    The rows' statistics, Δy, c, Ḡ_lat, Δq, Ḡ_s, Ḡ_lse, Ḡ_H and H come from rec (N, 12) fp32 as the dx
    kernel wrote it (tiles.load_row_record: one tile per row tile), Δq from delta_q instead where that is
    given (DEFER with several splits: summed after the dx kernel); the upstream pointers say which of
    them exist (the hard rows after the loop read Ḡ_lat and Ḡ_s through them)."""
    seed_lo, seed_hi = kernel_seed(seed_lo, seed_hi, seed_ptr)
    k_start = tl.program_id(0).to(tl.int64) * BLOCK_K
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = code_mask(offs_k, K, EVEN_K)
    split, row_lo, row_hi = split_row_range(rows_per_split, N)
    row_lo, row_hi = nonempty_range(row_lo, row_hi, NONEMPTY)
    offs_d = tl.arange(0, BLOCK_D)
    mu, mm, a, b, v = load_codes(means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, offs_k, mask_k, D, offs_d)
    g_c = tl.load(gc_ptr + offs_k, mask=mask_k, other=0.0) if gc_ptr is not None else a  # a: unread
    valid = mask_k[:, None]

    # the loop works with e = −2 dd (a_e = −2a: exact, and one multiply per element less), and one
    # accumulator for both dots: acc = Σ_n e x + Σ_n y_val Ḡ_z, so dμ = acc − μ Σ_n e
    a_e = -2.0 * a
    acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    # hard mode: the one-hot's terms after the loop, over the rows of this block's codes (hard_perm)
    HARD_ROWS: tl.constexpr = hard_perm_ptr is not None
    W_LAT: tl.constexpr = glat_ptr is not None and not HARD_ROWS  # w = Ḡ_lat·y_val − dℓ in the loop
    Y_VAL: tl.constexpr = not HARD_ROWS  # y_val's terms in the loop
    # half inputs form Y − Δy in Y, as dx does (the Ḡ_z dot accumulates onto it), and dℓ saves its
    # subtraction (static report, bf16, τ = 1: −0.7 to +0.6 per element, D = 256's spills 616 / 632 → 568 /
    # 544 B); fp32's tf32x3 dμ took more that way (+0.2 to +1.0 per fwd+bwd, +16 at D = 256 and τ = 0.5).
    # Δy is loaded where each branch uses it: one load before the sample moved fp32's schedule (+13 there)
    SHIFT_Y: tl.constexpr = OP_DTYPE != tl.float32
    # the noise first in the loop: while it is drawn, no other tile is live (registers; at τ = 1 its 1/log₂ u).
    # At τ = 1 the sample follows Y (static report: −0.1 to −0.9 per element at D = 64 and 128), and from
    # BLOCK_D = 128 on the noise does too, drawn just before the sample (256: −1.3 / −2.7 soft / hard, spills
    # 568 / 544 → 504 / 624 B; 128: −0.1 / −0.6, triton 3.6's hard spill 128 → 80 B)
    NOISE_LATE: tl.constexpr = TAU_ONE and BLOCK_D >= 128
    # add_row_sums's accumulator width (static report: 16 at BLOCK_D = 128 spills 404 B, 0 before)
    SUMS: tl.constexpr = 16 if OP_DTYPE != tl.float32 and BLOCK_D <= 64 else 1
    e_col = tl.zeros((BLOCK_K, SUMS), tl.float32)
    ones = ones_column(BLOCK_N, x_ptr)
    er_sum = tl.zeros((BLOCK_K,), tl.float32)
    gs_y = tl.zeros((BLOCK_K,), tl.float32)
    d_log_pi = tl.zeros((BLOCK_K,), tl.float32)
    for n_start in range(row_lo, row_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        rows = code_mask(offs_n, row_hi, EVEN_N)[None, :]
        if HAS_Y and not NOISE_LATE:
            g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K, True, TAU_ONE)
        x = load_block(x_ptr, n_start, offs_n < row_hi, D, offs_d)
        xx = tl.load(xx_ptr + offs_n, mask=offs_n < row_hi, other=0.0)
        xp = load_block(xp_ptr, n_start, offs_n < row_hi, 16, tl.arange(0, 16)) if xp_ptr is not None else xx
        s = col_half_distance(mu, x, mm, xx, xp, xp_ptr is not None, DOT_PRECISION)
        r, logits, clamp_ok = half_distances_logits(s, -a_e[:, None], b[:, None], valid)
        # the rows' values from the dx kernel's records (tiles.R_MQ .. R_ENT): the statistics, Δy, c, Ḡ_lat
        # and Δq as one (rows, 8) tile, at BLOCK_D = 256 as two (rows, 4) ones (the second loaded again
        # where c and Δq are needed: below); Ḡ_s, Ḡ_lse, Ḡ_H and H as one more where any exists
        if BLOCK_D <= 128:
            m_q, log2s_q, m_y, log2s_y, delta_y, c_y, g_lat, delta_q = load_row_record(rec_ptr, offs_n, N)
        else:
            m_q, log2s_q, m_y, log2s_y = load_columns(rec_ptr, offs_n, N, N_ROW, R_MQ)
        log2_q = softmax_log2prob(logits, m_q[None, :], log2s_q[None, :], LOG2E)
        q = tl.exp2(log2_q)
        da = r * a_e[:, None]  # d·a (d = −2r)
        if BLOCK_D > 128:
            delta_y, c_y, g_lat, delta_q = load_columns(rec_ptr, offs_n, N, N_ROW, R_DY)
        if gs_ptr is not None or glse_ptr is not None or gh_ptr is not None:
            g_s, g_lse, g_h, ent = load_columns(rec_ptr, offs_n, N, N_ROW, R_GS)
        else:  # unread
            g_s, g_lse, g_h, ent = m_q, m_q, m_q, m_q
        y = q  # placeholder when no y gradient (never used then)
        big_y = q
        if HAS_Y:
            if TAU_ONE:  # Y, then the sample from the rows' c (the dx kernel's)
                big_y, gz = col_upstream(da, v, g_lat, g_s, delta_y, gz_ptr, mu, offs_n, row_hi, D, offs_d, SHIFT_Y,
                                         glat_ptr is not None, gs_ptr is not None, DOT_PRECISION)
                if NOISE_LATE:
                    g = noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K, True, True)
                if BLOCK_D > 128:
                    # c and Δq loaded anew (another mask: not merged with the load above), so that they
                    # are not live across Y and the noise (static report, bf16, per element, soft / hard:
                    # dμ 73.1 / 69.8 → 71.8 / 71.3, spills 496 / 516 → 232 / 272 B, local loads and
                    # stores 5.1 / 4.4 → 1.8 / 1.9)
                    _dy, c_y, _gl, delta_q = load_columns(rec_ptr, offs_n, row_hi, N_ROW, R_DY)
                y = sample_prob(q, g, c_y[None, :])
            else:  # the sample, then Y (static report: Y first cost +0.5 to +1.3 per element at BLOCK_D = 256)
                noisy = tl.where(valid, logits + g, float("-inf"))
                y = softmax_prob(noisy, m_y[None, :], log2s_y[None, :], y_scale)
                big_y, gz = col_upstream(da, v, g_lat, g_s, delta_y, gz_ptr, mu, offs_n, row_hi, D, offs_d, SHIFT_Y,
                                         glat_ptr is not None, gs_ptr is not None, DOT_PRECISION)
        if hard_idx_ptr is not None and Y_VAL:
            hard_idx = tl.load(hard_idx_ptr + offs_n, mask=offs_n < row_hi, other=-1)
            # the one-hot's zeros taken from q (min(q, 0) = 0; a NaN row's NaN kept: propagate_nan) put
            # it in q's (MMA) layout, so the Ḡ_z dot takes it from registers; built from the compare alone
            # it made a round trip through shared memory (static report: −3.2 per element), and comparing
            # codes directly rather than positions in the tile saves the per-row work (−3.0; K < 2³¹,
            # checks.MAX_K)
            y_val = tl.where(offs_k.to(tl.int32)[:, None] == hard_idx.to(tl.int32)[None, :], 1.0,
                             tl.minimum(q, 0.0, propagate_nan=tl.PropagateNan.ALL))
        else:
            y_val = y
        y_tau = y if TAU_ONE else y * inv_tau  # τ = 1: a multiply per element less (static report: −0.8 to −1.4)
        if delta_q_ptr is not None:
            delta_q = load_row_vec(delta_q_ptr, offs_n, row_hi)
        dl, w = grad_logits(q, log2_q, y_tau, big_y, y_val, 0.0 if SHIFT_Y else delta_y[None, :],
                            delta_q[None, :], ent[None, :], g_lse[None, :], g_h[None, :], g_lat[None, :], g_c[:, None],
                            valid, HAS_Y, glse_ptr is not None, gh_ptr is not None,
                            gc_ptr is not None, W_LAT)
        dl = tl.where(rows, dl, 0.0)
        # without Ḡ_lat·y_val, e = dℓ·2a: w = −dℓ would be 0 − dℓ in Triton, an FADD per element
        e = tl.where(clamp_ok & rows & valid, w * a_e[:, None] if W_LAT else dl * (-a_e)[:, None], 0.0)
        # dλ = Σ_n [dℓ (d a − D/2) − Ḡ_lat y_val d a + Ḡ_s y_val σ²] = ½ Σ_n e·d − (D/2)·Σ_n dℓ + σ² Σ_n Ḡ_s y_val
        # (e·d = −2 w·d·a), assembled after the loop from column sums, as autograd assembles it; fp32 e
        # (its terms cancel). ½ Σ_n e·d = −Σ_n e·r (d = −2r: the same values, exactly)
        er_sum += tl.sum(e * r, axis=1)
        acc, e_col = add_e_terms(acc, e_col, e, x, ones, OP_DTYPE, DOT_PRECISION)
        if gs_ptr is not None and Y_VAL:
            gs_y += tl.sum(tl.where(rows, g_s[None, :] * y_val, 0.0), axis=1)
        d_log_pi += tl.sum(dl, axis=1)
        if gz_ptr is not None and Y_VAL:
            # y rounded to x's dtype by name, so that the interpreter rounds it as a GPU does
            y_op = tl.where(rows, y_val, 0.0).to(OP_DTYPE).to(gz.dtype)
            acc = mma(y_op, gz, acc, DOT_PRECISION, True)

    if HARD_ROWS:
        # the one-hot's terms, over the rows of this block's codes (each split an equal, whole-tile share
        # of them), as the loop formed them: the same distance tile (so the same clamp), e = Ḡ_lat·a_e at
        # (h_n, n) split hi + lo
        seg_lo = tl.load(hard_off_ptr + k_start)
        seg_hi = tl.load(hard_off_ptr + tl.minimum(k_start + BLOCK_K, K))
        share = tl.cdiv(tl.cdiv(seg_hi - seg_lo, tl.num_programs(1)), BLOCK_N) * BLOCK_N
        seg_lo += split * share
        seg_hi = tl.minimum(seg_hi, seg_lo + share)
        for p_start in range(seg_lo, seg_hi, BLOCK_N):
            in_seg = p_start + tl.arange(0, BLOCK_N) < seg_hi
            offs_n = tl.load(hard_perm_ptr + p_start + tl.arange(0, BLOCK_N), mask=in_seg, other=0)
            n_end = tl.where(in_seg, N, 0)  # load_row_vec's bound: the gathered rows, 0 outside the segment
            one_hot = (offs_k[:, None] == tl.load(hard_idx_ptr + offs_n, mask=in_seg, other=-1)[None, :])
            if glat_ptr is not None:
                x = gather_rows(x_ptr, offs_n, in_seg, D, offs_d)
                xx = tl.load(xx_ptr + offs_n, mask=in_seg, other=0.0)
                xp = gather_rows(xp_ptr, offs_n, in_seg, 16, tl.arange(0, 16)) if xp_ptr is not None else xx
                r, _, clamp_ok = half_distances_logits(col_half_distance(mu, x, mm, xx, xp, xp_ptr is not None,
                                                                         DOT_PRECISION), -a_e[:, None], b[:, None],
                                                       valid)
                g_lat = load_row_vec(glat_ptr, offs_n, n_end)
                e = tl.where(one_hot & clamp_ok, g_lat[None, :] * a_e[:, None], 0.0)
                er_sum += tl.sum(e * r, axis=1)
                acc, e_col = add_e_terms(acc, e_col, e, x, ones, OP_DTYPE, DOT_PRECISION)
            if gs_ptr is not None:
                gs_y += tl.sum(tl.where(one_hot, load_row_vec(gs_ptr, offs_n, n_end)[None, :], 0.0), axis=1)
            if gz_ptr is not None:
                gz = gather_rows(gz_ptr, offs_n, in_seg, D, offs_d)
                # a float tile: the compare cast to bf16 came out wrong under the interpreter
                y_op = tl.where(one_hot, 1.0, 0.0).to(OP_DTYPE).to(gz.dtype)
                acc = mma(y_op, gz, acc, DOT_PRECISION, True)

    mask_kd = mask_k[:, None] & (offs_d[None, :] < D)
    tl.store(acc_part_ptr + (split * K + offs_k[:, None]) * D + offs_d[None, :], acc, mask=mask_kd)
    tl.store(esum_part_ptr + split * K + offs_k, tl.sum(e_col, axis=1), mask=mask_k)
    d_log_var = -er_sum - half_d * d_log_pi
    if gs_ptr is not None:  # else 0·σ² (not foldable) kept σ² live across the loop: spilled at D = 128
        d_log_var += v * gs_y
    tl.store(dlv_part_ptr + split * K + offs_k, d_log_var, mask=mask_k)
    tl.store(dlp_part_ptr + split * K + offs_k, d_log_pi, mask=mask_k)


def hard_rows(hard_idx, K):
    """(perm, first) of the dμ kernel's hard-mode epilogue: the rows in order of their hard code (a
    stable sort: one order, so deterministic) and, per code k ≤ K, the position there of its first row
    (k = K: the end of the last code's rows). Codes outside [0, K) (a non-finite row's) fall outside
    first[0] .. first[K], so no code takes their term, as in the loop's one-hot."""
    codes, perm = torch.sort(hard_idx, stable=True)
    return perm, torch.searchsorted(codes, torch.arange(K + 1, device=hard_idx.device))


def defer_delta_q(half: bool, has_gc: bool, has_y: bool, y_from_forward: bool, BLOCK_D: int, device) -> bool:
    """Whether the dx kernel takes over the Δ pass (``_gmvq_bwd_dx_kernel`` given codes): for half inputs
    when that pass would be Δq alone (Δy from the forward's sums, or no gradient reaching y), and where
    the extra (BLOCK_N, BLOCK_D) fp32 accumulator fits in registers: BLOCK_D ≤ 64 (static report: dx at
    D = 128 has 12 to spare), or ≤ 128 on sm_90 with ``GMVQ_DEFER_DQ_128=1`` (config.defer_dq_max_block_d:
    a GPU's A/B). The stand-in for Δq is Ḡ_c at the argmax code, in hard mode too (saved
    beside the sample: the sample itself would be a poor stand-in where q is peaked but not one-hot, 1
    row in 10 at q_max = 0.9, and then Ḡ_c − c is no longer small where q is large)."""
    return half and has_gc and (y_from_forward or not has_y) and BLOCK_D <= defer_dq_max_block_d(device)


def gmvq_bwd(x, means, a, b, v, noise, saved, grads, *, tau, hard, seed, dot_precision, mm=None, mp=None):
    """Gradients of the fused op. Inputs as for ``gmvq_fwd`` (mm and mp too); ``saved`` as ``gmvq_fwd`` returns it;
    ``grads`` = {output name: upstream gradient} with names from ``spec.DIFF_OUTPUTS`` (quantized (N, D);
    agg_posterior (K,); the others (N,)). A missing or None entry removes its work from the kernels.

    Returns (dx (N, D) x.dtype, dmeans (K, D) means.dtype, d log_var (K,), d log π (K,) fp32)."""
    unknown = set(grads) - set(DIFF_OUTPUTS)
    assert not unknown, f"no gradient flows through {unknown}"
    N, D = x.shape
    K = means.shape[0]
    dev = x.device
    # no dtype conversion where the gradient has the dtype already: even a no-op .float() is a dispatched
    # op, host time on a GPU (speed.py --host-cpu counts them)
    as_dtype = lambda t, dtype: t if t.dtype == dtype else t.to(dtype)  # noqa: E731
    f32 = lambda name: None if grads.get(name) is None else as_dtype(grads[name], torch.float32)  # noqa: E731
    g_lse, g_lat, g_s, g_h = (None if g is None else g.contiguous()
                              for g in map(f32, ("log_likelihood", "latent_nll", "mixture_var", "entropy")))
    # Ḡ_q̄ enters only as q_k (Ḡ_k − Σ_j q_j Ḡ_j): shifted by its mean (exact, as Σ_k q_k = 1) what cancels
    # there, where q is peaked or Ḡ_q̄ is nearly constant (q̄ ≈ π, the ALBO's aim), is smaller
    g_c = f32("agg_posterior")
    g_c = None if g_c is None else ((g_c - g_c.mean()) / N).contiguous()
    g_z = grads.get("quantized")
    g_z = None if g_z is None else interpreter_operand(as_dtype(g_z, x.dtype).contiguous())
    has_y = g_z is not None or g_lat is not None or g_s is not None
    prec = dot_precision_for(x, dot_precision)
    xk, mk = interpreter_operand(x), interpreter_operand(means)
    mm = code_sq_norms(means) if mm is None else mm
    mp = code_norm_operand(mm, x.dtype) if mp is None else mp
    BLOCK_D = block_d(D)
    rcfg, ccfg = row_config(D, x.dtype, dev), col_config(D, x.dtype, dev)
    seed_lhp = seed_args(seed)
    op_dtype = TL_DTYPES[x.dtype]
    nonempty = not serial_wgmma()  # dx's and dμ's loops declared non-empty (tiles.nonempty_range)
    row_launch = dict(DOT_PRECISION=prec, BLOCK_N=rcfg.BLOCK_N, BLOCK_K=rcfg.BLOCK_K, BLOCK_D=BLOCK_D,
                      **rcfg.launch_options())
    splits, codes_per_split = split_codes(N, K, rcfg.BLOCK_N, rcfg.BLOCK_K, dev)
    row_grid = (triton.cdiv(N, rcfg.BLOCK_N), splits)
    parts = lambda *shape, n=splits: split_parts(n, *shape, device=dev)  # noqa: E731
    y_sums = saved.get("y_sums") if has_y else None
    tau1 = tau_one(dict(noise_ptr=noise, y_scale=y_scale(tau), K=K))  # the kernels' TAU_ONE
    defer = defer_delta_q(x.dtype != torch.float32, g_c is not None, has_y, y_sums is not None, BLOCK_D, dev)
    if defer:
        dq_part = parts(N)
        delta_y = None  # the dx kernel forms Δy from the forward's sums
    else:
        # the Δ kernel holds no (BLOCK_N, D) accumulator: its own, wider tiles (config.DELTA_CONFIGS)
        dcfg = delta_config(D, x.dtype, dev)
        d_splits, d_codes_per_split = split_codes(N, K, dcfg.BLOCK_N, dcfg.BLOCK_K, dev)
        dy_part = parts(N, n=d_splits) if has_y else None
        # Σ_k y per row where the kernel recomputes y (its HAS_Y) at τ = 1: Δy is the mean of Y under that y
        ym_part = parts(N, n=d_splits) if has_y and y_sums is None and tau1 else None
        dq_part = parts(N, n=d_splits) if g_c is not None else None
        if has_y or g_c is not None:
            # with the forward's y_sums (half inputs) Δy comes from them and the loop is Δq alone: no noise,
            # and with the norm dot the halved distances, which take 2a (the kernel's HALF)
            half = mp is not None and not (has_y and y_sums is None)  # the kernel's HAS_Y false
            _gmvq_bwd_delta_kernel[(triton.cdiv(N, dcfg.BLOCK_N), d_splits)](
                xk, mk, a * 2.0 if half else a, b, v, mm, mp, noise, saved["stats"], saved["x_sq"], g_z, g_lat, g_s,
                g_c, y_sums, dy_part, ym_part, dq_part, N, K, D, *seed_lhp, y_scale(tau), d_codes_per_split,
                DOT_PRECISION=prec, HALF=half, BLOCK_N=dcfg.BLOCK_N, BLOCK_K=dcfg.BLOCK_K, BLOCK_D=BLOCK_D,
                **dcfg.launch_options())
        delta_y, delta_q = (None if t is None else sum_splits(t, d_splits) for t in (dy_part, dq_part))
        if ym_part is not None:
            delta_y = delta_y.div_(sum_splits(ym_part, d_splits))

    dd_part, acc_part = parts(N), parts(N, D)
    qa_part, qamu_part = (parts(N), parts(N, D)) if defer and splits > 1 else (None, None)
    # the dx kernel writes each row's values for the dμ kernel (tiles.load_row_record), Δq where it is final
    # there (not with several splits of a deferred Δq, which are added below)
    rec = parts(N, N_ROW.value, n=1)
    dq_in_rec = qa_part is None
    hard_idx = saved["hard_idx"] if hard else None
    _gmvq_bwd_dx_kernel[row_grid](
        xk, mk, a, b, v, mm, acc_norm_operand(mp, D), noise, saved["stats"], saved["x_sq"], saved["entropy"],
        hard_idx, delta_y, dq_part if defer else delta_q, g_z, g_lse, g_h, g_lat, g_s, g_c, dd_part, acc_part, y_sums,
        saved["codes"] if defer else None, qa_part, qamu_part, rec,
        N, K, D, *seed_lhp, 1.0 / tau, y_scale(tau), codes_per_split, OP_DTYPE=op_dtype, NONEMPTY=nonempty,
        **row_launch)
    if defer:
        delta_q = sum_splits(dq_part, splits)
    if qa_part is not None:  # several splits: dd's a·q·r with r = Δq − c, as the kernel adds it for one
        dd_part, acc_part = sum_splits(dd_part, splits), sum_splits(acc_part, splits)
        qa = sum_splits(qa_part, splits)
        rel = (delta_q - g_c[saved["codes"].clamp_min(0)]).masked_fill_(qa == 0, 0.0)  # as in the kernel
        dd_part = dd_part + rel * qa
        acc_part = torch.addcmul(acc_part, rel[:, None], sum_splits(qamu_part, splits))
        splits = 1
    # dx = −2 (acc − x Σ dd) in x's dtype, the splits added first: one launch
    dx = finish_splits(splits, acc_part, dd_part, x, scale=-2.0)[0]

    n_col = triton.cdiv(K, ccfg.BLOCK_K)
    col_splits, rows_per_split = split_rows(N, n_col, ccfg.BLOCK_N, dev)
    # dμ = acc − μ Σ_n e from the kernel's partial acc (splits, K, D) and Σ_n e (splits, K)
    mu_acc_part = parts(K, D, n=col_splits)
    esum_part, dlv_part, dlp_part = (parts(K, n=col_splits) for _ in range(3))
    x_parts = saved.get("x_parts")  # the forward's, where it was kept (an eager backward: autograd.EagerFused)
    xp = row_norm_operand(saved["x_sq"], mp) if x_parts is None else x_parts
    # hard mode: the one-hot's terms after the loop where the codebook has enough blocks for that to pay
    # (config.HARD_ROWS_MIN_BLOCKS)
    after_loop = hard and has_y and n_col >= HARD_ROWS_MIN_BLOCKS
    hard_perm_first = hard_rows(saved["hard_idx"], K) if after_loop else (None, None)
    _gmvq_bwd_dmu_kernel[(n_col, col_splits)](
        xk, mk, a, b, v, mm, noise, saved["x_sq"], xp, hard_idx, None if dq_in_rec else delta_q,
        g_z, g_lse, g_h, g_lat, g_s, g_c, mu_acc_part, esum_part, dlv_part, dlp_part, *hard_perm_first, rec,
        N, K, D, 0.5 * D, *seed_lhp, 1.0 / tau, y_scale(tau), rows_per_split,
        DOT_PRECISION=prec, OP_DTYPE=op_dtype, NONEMPTY=nonempty, BLOCK_N=ccfg.BLOCK_N,
        BLOCK_K=ccfg.BLOCK_K, BLOCK_D=BLOCK_D, **ccfg.launch_options())
    # in fp32, the splits added first (a common offset of x and μ cancels between the two sums): one launch
    # for dμ and the sums of d log σ² and d log π
    dmu, (dlv, dlp) = finish_splits(col_splits, mu_acc_part, esum_part, means, vecs=(dlv_part, dlp_part))
    return dx, dmu, dlv, dlp
