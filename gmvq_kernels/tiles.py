"""Tile helpers shared by the forward and backward kernels: one definition of each per-(n, k) quantity,
so that the backward recomputes exactly what the forward computed.

Helpers take operands already broadcast to the tile's orientation: the row kernels work on (BLOCK_N,
BLOCK_K) tiles (per-row vectors as ``v[:, None]``, per-code as ``v[None, :]``); the column kernel on
the transposed (BLOCK_K, BLOCK_N) tiles, so that its sums over rows stay inside a warp.
"""
import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.autotuner import Heuristics

from .config import FP_FUSION, INTERPRET, NORM_DOT_MAX_BLOCK_D, block_d, norm_dot
from .noise import gumbel_tile
from .spec import LOG_2PI as _LOG_2PI, STATS_FIELDS

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
LOG_2PI = tl.constexpr(_LOG_2PI)
INTERPRETED = tl.constexpr(INTERPRET)
# columns of the (N, 4) softmax statistics the forward saves (spec.STATS_FIELDS): each softmax's row max
# in natural units and log2 of its sum, so exp2((e − m)·scale − log2 s) reproduces its probabilities
assert STATS_FIELDS == ("m_q", "log2_s_q", "m_y", "log2_s_y"), "load_stats splits the records in this order"
N_STATS = tl.constexpr(len(STATS_FIELDS))
M_Q = tl.constexpr(STATS_FIELDS.index("m_q"))
LOG2S_Q = tl.constexpr(STATS_FIELDS.index("log2_s_q"))
M_Y = tl.constexpr(STATS_FIELDS.index("m_y"))
LOG2S_Y = tl.constexpr(STATS_FIELDS.index("log2_s_y"))
# columns of the (N, 12) per-row records the dx kernel writes for the dμ kernel: a column kernel's
# per-row (N,) vector costs ~0.8 per element and tile (its load converted into the (codes × rows) layout
# through shared memory). The forward's four statistics, then Δy, the sample's c, Ḡ_lat and Δq: with
# them one (rows, 8) tile (load_row_record) holds all the ALBO objective needs, at any τ; then Ḡ_s,
# Ḡ_lse, Ḡ_H and H, a (rows, 4) tile (load_columns) where any of them exists
R_MQ, R_LOG2SQ, R_MY, R_LOG2SY, R_DY, R_CY, R_GLAT, R_DQ, R_GS, R_GLSE, R_GH, R_ENT = (tl.constexpr(i)
                                                                                     for i in range(12))
N_ROW = tl.constexpr(12)


def apply_rules(rules, arg_names, args, kwargs):
    """``kwargs`` with the value of each launch rule (name: rule(arguments by name)) added, from one dict
    of the launch's arguments; each rule sees the values of the rules before it, as in triton.heuristics."""
    named = {**dict(zip(arg_names, args)), **kwargs}
    for name, rule in rules.items():
        kwargs[name] = named[name] = rule(named)
    return kwargs


class _Rules(Heuristics):
    """``triton.heuristics`` with one dict of the launch's arguments per launch (``apply_rules``): triton's
    builds it anew for every rule (host time: ~16 → ~8 µs per launch of the dμ kernel, 47 arguments and 4
    rules, on this project's 2-core CPU; ~4 such launches per fwd+bwd)."""

    def run(self, *args, **kwargs):
        return self.fn.run(*args, **apply_rules(self.values, self.arg_names, args, kwargs))


def heuristics(rules):
    """Decorator: ``triton.heuristics(rules)`` at the host cost of ``_Rules``."""
    return lambda fn: _Rules(fn, fn.arg_names, rules)


def even_k(args):
    """triton.heuristics rule: BLOCK_K divides K, so code masks fold away (see code_mask)."""
    return args["K"] % args["BLOCK_K"] == 0


def even_n(args):
    """triton.heuristics rule: BLOCK_N divides N; row splits are whole BLOCK_N multiples
    (config.split_rows), so every row tile of a column kernel is then full."""
    return args["N"] % args["BLOCK_N"] == 0


def tau_one(args):
    """triton.heuristics rule: τ = 1 (y_scale = log₂ e exactly) and the noise drawn in the kernel, so that y
    comes from q and the draws' 1/log₂ u (sample_prob: benchmarks/README.md, lever 15). Not at K = 1, where
    the sample is exactly 1 through its own softmax but only to rounding through q's (so a gradient that
    vanishes there, e.g. the quantized output's, would come out ~10⁻⁷: tests/random_sweep.py, seed 31)."""
    return args["noise_ptr"] is None and args["y_scale"] == LOG2E.value and args["K"] > 1


@triton.jit
def load_rows(ptr, offs_n, N, D, offs_d):
    """A (BLOCK_N, BLOCK_D) tile of an (N, D) row-major tensor as stored. In a loop over row blocks the
    column kernels take load_block instead; the row kernels' tiles and dμ's Ḡ_z tile counted more that
    way (docs/speed_history.md, item 37)."""
    mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    return tl.load(ptr + offs_n[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def load_block(ptr, start, rows_ok, D, offs_d):
    """The (BLOCK, BLOCK_D) tile of a (·, D) row-major tensor whose rows are start + arange(BLOCK)
    (``start`` a scalar; rows_ok: which of them exist), addressed as one uniform int64 base and int32
    offsets within the block, which stay the same from one block to the next: a loop over blocks then
    carries no 64-bit pointer per row of the tile, which ptxas spilled at D = 256 (static report)."""
    rows = tl.arange(0, rows_ok.shape[0])
    return tl.load(ptr + tl.cast(start, tl.int64) * D + (rows[:, None] * D + offs_d[None, :]),
                   mask=rows_ok[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def sq_norms(t):
    """fp32 squared norms of the rows of a tile (the forward's ||x||², stored for every later pass:
    spec.SAVED_FIELDS "x_sq")."""
    tf = t.to(tl.float32)
    return tl.sum(tf * tf, axis=1)


@triton.jit
def code_mask(offs_k, K, EVEN_K: tl.constexpr):
    """offs_k < K, folded to a constant when the block divides K (its selects then vanish). Serves
    rows as well: code_mask(offs_n, N, EVEN_N)."""
    if EVEN_K:
        return tl.full(offs_k.shape, 1, tl.int1)
    else:
        return offs_k < K


# K·W (W = D for the means, 16 for the codes' norm operand) from which the row kernels address code tiles
# in 64 bits (wide_codes); tests lower it to run that path on small shapes
WIDE_CODES_MIN = 2**31


def wide_codes(args):
    """triton.heuristics rule of the row kernels' WIDE_CODES: a (K, D) codebook or its (K, 16) norm
    operand holds 2³¹ elements or more (only K < 2³¹ bounds K: checks.MAX_K), so that a code's offset
    k·D no longer fits 32 bits (code_index)."""
    return args["K"] * max(args["D"], 16) >= WIDE_CODES_MIN


@triton.jit
def code_index(offs_k, WIDE: tl.constexpr):
    """The row index of a (K, W) row-major tensor (the means, the codes' norm operand) for the codes
    offs_k. The row kernels' offs_k are 32-bit, and offs_k·W wraps where K·W passes 2³¹: WIDE
    (wide_codes) widens them before the product. Only then: 64-bit offsets cost the row kernels 0.5–3.8
    instructions per element per fwd+bwd in the static report, and spills at D = 128, each of three ways
    tried (benchmarks/README.md, 2026-12-05). The column kernels' offs_k are 64-bit. Callers form
    ptr + index·W + column in one expression: a helper that returned ptr + offs_k·W, the caller adding
    the columns, cost dμ at D = 128 64 B more spills under triton 3.6.0 (tests/test_compile.py)."""
    if WIDE:
        return offs_k.to(tl.int64)
    else:
        return offs_k


@triton.jit
def load_codes(means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, offs_k, mask_k, D, offs_d, WIDE: tl.constexpr = False):
    """Code tile (BLOCK_K, BLOCK_D) as stored and the per-code a, b, v (spec.component_terms:
    ℓ = b − d·a, v = σ²) and mm = ||μ||² (spec.code_sq_norms), as (μ, mm, a, b, v); WIDE: see
    code_index. The norms come
    from the launcher, computed once per call: formed from the tile they cost the row kernels, which
    meet every code tile once per row block, 3–7 instructions per (n, k) element at D ≥ 128 (the
    conversion, the squares, the sum's shuffles; static report). With ``mm_ptr`` None they are formed
    from the tile: cheaper than the load in the encode kernel at D ≤ 32 (11.8 against 12.5)."""
    mu = tl.load(means_ptr + code_index(offs_k, WIDE)[:, None] * D + offs_d[None, :],
                 mask=mask_k[:, None] & (offs_d[None, :] < D), other=0.0)
    a = tl.load(a_ptr + offs_k, mask=mask_k, other=0.0)
    b = tl.load(b_ptr + offs_k, mask=mask_k, other=0.0)
    v = tl.load(v_ptr + offs_k, mask=mask_k, other=0.0)
    if mm_ptr is None:
        muf = mu.to(tl.float32)
        mm = tl.sum(muf * muf, axis=1)
    else:
        mm = tl.load(mm_ptr + offs_k, mask=mask_k, other=0.0)
    return mu, mm, a, b, v


@triton.jit
def norm_parts(sq, SCALE: tl.constexpr, PARTS_FIRST: tl.constexpr, ONE: tl.constexpr = 1.0):
    """A (L, 16) fp32 operand of the norm dot for L squared norms ``sq`` (fp32): SCALE·sq (SCALE 1 or
    −½: exact) as three parts of 8 significant bits each, so that each is exact in bf16 and they sum
    to SCALE·sq exactly (fp32 has 24; below |SCALE·sq| = 2⁻¹⁰⁹, where the parts are subnormal in bf16,
    within 2⁻¹³¹), split by truncation (clearing low bits: one LOP3 each), in columns 0–2 and ONE (1 or
    −½) in 3–5 (PARTS_FIRST: the rows' operand), or the other way round (the codes'), zeros elsewhere.
    The dot of a rows' and a codes' operand (ONE = 1) is then SCALE·(||x||² + ||μ||²), which the tensor
    cores add onto the distance dot (row_tile, col_half_distance); a rows' operand of SCALE = ONE = −½
    and the codes' of SCALE 1 give −(||x||² + ||μ||²)/2 (row_half_logits). A non-finite norm gives
    non-finite parts (its row is NaN anyway: the NaN policy)."""
    p = sq * SCALE
    hi = (p.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    rest = p - hi
    mid = (rest.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    lo = rest - mid
    col = tl.arange(0, 16)[None, :]
    part = col if PARTS_FIRST else col - 3  # which part a column holds, if any
    ones = (col >= 3) & (col < 6) if PARTS_FIRST else col < 3
    return tl.where(part == 0, hi[:, None], tl.where(part == 1, mid[:, None],
                    tl.where(part == 2, lo[:, None], tl.where(ones, ONE, 0.0))))


@triton.jit
def store_norm_parts(out_ptr, offs, mask, sq, SCALE: tl.constexpr, PARTS_FIRST: tl.constexpr):
    """norm_parts of the squared norms ``sq`` into rows ``offs`` (64-bit: offs·16 may pass 2³¹) of an
    (L, 16) norm operand, in its dtype."""
    tl.store(out_ptr + offs[:, None] * 16 + tl.arange(0, 16)[None, :],
             norm_parts(sq, SCALE, PARTS_FIRST).to(out_ptr.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _norm_parts_kernel(sq_ptr, out_ptr, L, SCALE: tl.constexpr, PARTS_FIRST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    store_norm_parts(out_ptr, offs, offs < L, tl.load(sq_ptr + offs, mask=offs < L, other=0.0), SCALE, PARTS_FIRST)


def norm_operand_buffer(L, device):
    """An (L, 16) norm operand's storage: bf16, fp32 under the interpreter (whose half dots fail:
    interpreter_operand)."""
    return torch.empty((L, 16), dtype=torch.float32 if INTERPRET else torch.bfloat16, device=device)


def norm_operand(sq, scale: float, parts_first: bool):
    """``norm_parts`` of the squared norms ``sq`` (L,) fp32 as an (L, 16) tensor (norm_operand_buffer),
    one launch."""
    out = norm_operand_buffer(sq.shape[0], sq.device)
    _norm_parts_kernel[(triton.cdiv(sq.shape[0], 64),)](sq, out, sq.shape[0], SCALE=scale, PARTS_FIRST=parts_first,
                                                         BLOCK=64, **FP_FUSION)
    return out


def code_norm_operand(mm, dtype):
    """The codes' norm operand of the row kernels, (K, 16): ``norm_operand`` of mm = ||μ||², where the
    kernels add the norms on the tensor cores (``config.norm_dot``: bf16 inputs), else None."""
    return norm_operand(mm, 1.0, False) if norm_dot(dtype) else None


@triton.jit
def exp_accurate(x):
    """exp(x) in fp32 as torch computes it on a GPU (libdevice's expf, within an ulp), where ``tl.exp``
    is ex2.approx of x·log₂e (its relative error grows with |x|). The interpreter has no libdevice and
    takes NumPy's exp."""
    if INTERPRETED:
        return tl.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def _code_terms_kernel(means_ptr, lv_ptr, lp_ptr, consts_ptr, mp_ptr, K, D, half_d, uniform_lp, BLOCK: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    # 64-bit offsets: offs·D, offs·16 and 3K may pass 2³¹ (K < 2³¹ only: checks.MAX_K)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    row = tl.cast(K, tl.int64)  # consts' row stride
    lv = tl.load(lv_ptr + offs, mask=mask, other=0.0)
    lp = tl.load(lp_ptr + offs, mask=mask, other=0.0) if lp_ptr is not None else uniform_lp
    # spec.component_terms' formulas and roundings; consts' rows a, b, v, mm
    tl.store(consts_ptr + offs, 0.5 * exp_accurate(-lv), mask=mask)
    tl.store(consts_ptr + row + offs, lp - half_d * (lv + LOG_2PI), mask=mask)
    tl.store(consts_ptr + 2 * row + offs, exp_accurate(lv), mask=mask)
    mm = tl.zeros((BLOCK,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mu = tl.load(means_ptr + offs[:, None] * D + cols[None, :], mask=mask[:, None] & (cols < D)[None, :],
                     other=0.0).to(tl.float32)
        mm += tl.sum(mu * mu, axis=1)
    tl.store(consts_ptr + 3 * row + offs, mm, mask=mask)
    if mp_ptr is not None:  # code_norm_operand
        store_norm_parts(mp_ptr, offs, mask, mm, 1.0, False)


def code_terms(means, log_var, log_pi):
    """(consts, mp) of the codes in one launch: consts (4, K) fp32 holds the rows a, b, v of
    spec.component_terms of log_var and log_pi (K,) fp32 (None: the uniform prior, −log K, as
    spec.log_prior_probs makes it) and mm = ||μ||² (spec.code_sq_norms); mp ``code_norm_operand``
    (None without the norm dot). No gradient (the fused backward differentiates log σ² and log π
    itself). The ten or so small torch ops it replaces cost a launch and dispatch each on a GPU (host
    time: README "Host path")."""
    K, D = means.shape
    consts = torch.empty((4, K), dtype=torch.float32, device=means.device)
    mp = norm_operand_buffer(K, means.device) if norm_dot(means.dtype) else None
    log_pi = None if log_pi is None else log_pi.contiguous()
    _code_terms_kernel[(triton.cdiv(K, 64),)](means, log_var.contiguous(), log_pi, consts, mp, K, D, 0.5 * D,
                                              -math.log(K), BLOCK=64, BLOCK_D=min(block_d(D), 64), **FP_FUSION)
    return consts, mp


def acc_norm_operand(mp, D):
    """The codes' norm operand for the row kernels that hold a (BLOCK_N, D) accumulator (the forward, dx):
    ``mp`` up to config.NORM_DOT_MAX_BLOCK_D, None beyond (the norms then added per element there)."""
    return mp if block_d(D) <= NORM_DOT_MAX_BLOCK_D else None


def row_norm_operand(xx, mp):
    """The rows' norm operand of the column kernels (q̄, dμ), (N, 16): ``norm_operand`` of −||x||²/2
    (col_half_distance), where the row kernels take the codes' ``mp`` (code_norm_operand), else None. The
    forward kernel writes it beside ||x||² (``x_parts``); the backward forms it where it was not kept."""
    return None if mp is None else norm_operand(xx, -0.5, True)


@triton.jit
def distances_logits(d_raw, a, b, valid):
    """(d, ℓ, clamp_ok) of a tile from the raw distance d_raw = ||x||² + ||μ||² − 2 x·μ: d clamped at 0,
    ℓ = b − d·a (−inf where ``valid`` is false), clamp_ok where the clamp passes gradient (raw d ≥ 0,
    as torch.clamp_min). ``a``, ``b``, ``valid`` are broadcast to the tile."""
    d = tl.maximum(d_raw, 0.0)
    logits = tl.where(valid, b - d * a, float("-inf"))
    return d, logits, d_raw >= 0.0


@triton.jit
def col_half_distance(mu, x, mm, xx, xp, NORM_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """s = μ·x − (||μ||² + ||x||²)/2 = −d_raw/2 of a column kernel's (codes × rows) tile, for the codes
    ``mu`` with squared norms ``mm`` (BLOCK_K,) and the rows ``x``, ``xx``. With NORM_DOT the tensor
    cores add the norms: a second dot of the codes' operand of −mm/2 (norm_parts, formed here: the
    codes stay for the whole loop) and the rows' ``xp`` (row_norm_operand). Halved, not −2 μ·x: the
    per-code factors of half_distances_logits then cost nothing per element, where scaling μ would
    take a second μ tile (row_tile, whose per-code factors would cost per element, scales x instead).
    Without NORM_DOT, s from the norms with the roundings of d_raw: −2s is row_tile's d_raw bit for bit."""
    s = mma(mu, tl.trans(x), None, DOT_PRECISION, False)
    if NORM_DOT:
        mp = norm_parts(mm, -0.5, False).to(mu.dtype)
        s = tl.dot(mp, tl.trans(xp), s, input_precision=DOT_PRECISION)
    else:
        s = s - 0.5 * (mm[:, None] + xx[None, :])
    return s


@triton.jit
def half_distances_logits(s, a2, b, valid):
    """(r, ℓ, clamp_ok) of a column tile from s = −d_raw/2 (col_half_distance), with a2 = 2a per code:
    r = min(s, 0) = −d/2, ℓ = b − d·a = b + a2·r, clamp_ok where raw d ≥ 0; d·a is r·(−a2). The values
    of distances_logits exactly (the factors are powers of two)."""
    r = tl.minimum(s, 0.0)
    logits = tl.where(valid, b + a2 * r, float("-inf"))
    return r, logits, s <= 0.0


@triton.jit
def noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K: tl.constexpr,
               CODES_FIRST: tl.constexpr = False, INV_LOG2U: tl.constexpr = False):
    """Gumbel noise of a (BLOCK_N, BLOCK_K) tile, or of its transpose when CODES_FIRST (the column
    kernels' orientation): drawn from (seed, n, k), or read from the explicit (N, K) fp32 ``noise``
    tensor when one was given. INV_LOG2U (drawn noise only): 1/log₂ u of the draws instead, for
    sample_prob."""
    tl.static_assert(noise_ptr is None or not INV_LOG2U, "explicit noise has no u")
    if noise_ptr is None:
        g = gumbel_tile(seed_lo, seed_hi, offs_n, k_start, BLOCK_K, CODES_FIRST, INV_LOG2U)
    elif CODES_FIRST:
        mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
        g = tl.load(noise_ptr + offs_n[None, :] * K + offs_k[:, None], mask=mask, other=0.0)
    else:
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        g = tl.load(noise_ptr + offs_n[:, None] * K + offs_k[None, :], mask=mask, other=0.0)
    return g


@triton.jit
def softmax_log2prob(e, m, log2s, scale, cap=0.0):
    """log2 of a softmax probability from its row statistics, (e − m)·scale − log2 s, capped at 0: a
    tile recomputed with another summation order than the one that produced the statistics can sit an
    ulp above the max, and a huge scale (σ² → 0, τ → 0) would turn that ulp into inf. With log2 s
    lowered by c and cap = c it is log2 of 2^c times the probability (see softmax_prob). NaN statistics
    (a non-finite row: the NaN policy) give NaN: a default min on the GPU (PTX min.f32) would return the
    cap, i.e. probability 1 at every code, and q̄ finite garbage (min.NaN.f32 costs the same one FMNMX)."""
    return tl.minimum((e - m) * scale - log2s, cap, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def softmax_prob(e, m, log2s, scale, log2_gain=0.0):
    """The probability exp2(softmax_log2prob(...)) of a softmax from its row statistics (≤ 1), times
    2^log2_gain when ``log2s`` comes lowered by log2_gain (a per-row constant: the factor costs nothing
    per element)."""
    return tl.exp2(softmax_log2prob(e, m, log2s, scale, log2_gain))


@triton.jit
def sample_scale(m_q, log2s_q, m_y, log2s_y):
    """Per row, the factor c of sample_prob: y = q·(1/log₂ u)·c at τ = 1. With g = −ln E and
    E = −log₂ u·ln 2, exp(ℓ + g − m_y)/S_y = exp(ℓ − m_q)/S_q · (S_q/S_y)·exp(m_q − m_y)/E, so
    c = −log₂ e·2^((m_q − m_y)·log₂ e + log₂ S_q − log₂ S_y) (the forward's statistics; log₂ S_y may come
    lowered by a gain, as for softmax_prob)."""
    # the tensor first: under the interpreter constexpr·tensor would stay a constexpr
    return tl.exp2((m_q - m_y) * LOG2E + log2s_q - log2s_y) * -LOG2E


@triton.jit
def sample_prob(q, inv_log2u, c):
    """The soft sample y = softmax(ℓ + g) at τ = 1 from q = softmax(ℓ), the draws' 1/log₂ u (noise_tile's
    INV_LOG2U) and the rows' c (sample_scale), all broadcast to the tile: two multiplies in place of g's
    second log, ℓ + g and the exponential of softmax_prob (benchmarks/README.md, lever 15). q ≤ 1 and
    |1/log₂ u| < 2²⁴ keep it finite; masked codes have q = 0, so y = 0 there too."""
    return q * inv_log2u * c


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, A_LO_FIRST: tl.constexpr):
    """tl.dot(a, b, acc) at DOT_PRECISION, with "tf32x3" spelled out as three tf32 dots of the
    operands' tf32 parts (split_hi_lo at fp32): lo·hi and hi·lo (A_LO_FIRST: a's lo first), then hi·hi
    onto them.

    Why not Triton's own tf32x3: its decomposition also guards every part against NaN (an FSETP and an
    FSEL per operand value and dot; static report, fp32 at rows 1–4: −11 to −22 % instructions per
    fwd+bwd without them), and it orders the cross products by operand position (lhs_lo·rhs_hi first),
    so a distance formed as x·μᵀ in the row kernels and as μ·xᵀ in the column kernels (q̄, dμ) added
    them in swapped order and could differ in the last bit, which a small σ² turns into visible error
    (README, "Correctness": a trained quantizer). Callers pass A_LO_FIRST so that the rows' lo part
    always meets the codes' hi part first: False for the column kernels' μ·xᵀ and μ·Ḡ_zᵀ, True for
    the row kernels' x·μᵀ and Ḡ_z·μᵀ; the dots only one pass forms (p_y·μ, dd·μ, eᵀ·x, yᵀ·Ḡ_z) take
    True, their order mattering to no other pass."""
    if DOT_PRECISION == "tf32x3":
        a_hi, a_lo = split_hi_lo(a, tl.float32)
        b_hi, b_lo = split_hi_lo(b, tl.float32)
        if A_LO_FIRST:
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        else:
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def row_tile(x, xx, xp, means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, mp_ptr, k_start, K, D, offs_d,
             EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr = False):
    """One codebook tile of a row kernel (rows × codes) for the rows ``x`` with squared norms ``xx``:
    (offs_k, mask_k, μ tile, a, v, d, ℓ, clamp_ok), see load_codes and distances_logits.

    With the codes' norm operand (``mp_ptr``, code_norm_operand), x comes scaled by −2 (exact) and
    ``xp`` is the rows' operand of ||x||² (norm_parts, scale 1; see row_operands): the tensor cores then
    return d_raw = ||x||² + ||μ||² − 2 x·μ, where forming it costs an FADD and an FFMA per element
    (static report). Else x as stored and ``xp`` unread. WIDE: the kernel's WIDE_CODES (code_index)."""
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = code_mask(offs_k, K, EVEN_K)
    mu, mm, a, b, v = load_codes(means_ptr, a_ptr, b_ptr, v_ptr, mm_ptr, offs_k, mask_k, D, offs_d, WIDE)
    xm = mma(x, tl.trans(mu), None, DOT_PRECISION, True)
    if mp_ptr is not None:  # mm unread: the compiler drops its load
        d_raw = tl.dot(xp, tl.trans(load_code_parts(mp_ptr, offs_k, mask_k, WIDE)), xm,
                       input_precision=DOT_PRECISION)
    else:
        d_raw = xx[:, None] + mm[None, :] - 2.0 * xm
    d, logits, clamp_ok = distances_logits(d_raw, a[None, :], b[None, :], mask_k[None, :])
    return offs_k, mask_k, mu, a, v, d, logits, clamp_ok


@triton.jit
def load_code_parts(mp_ptr, offs_k, mask_k, WIDE: tl.constexpr = False):
    """The (BLOCK_K, 16) tile of the codes' norm operand (code_norm_operand) for the codes offs_k."""
    return tl.load(mp_ptr + code_index(offs_k, WIDE)[:, None] * 16 + tl.arange(0, 16)[None, :], mask=mask_k[:, None],
                   other=0.0)


@triton.jit
def half_row_operand(xx, x):
    """The rows' norm operand of row_half_logits, in x's dtype: norm_parts of ||x||² at SCALE = ONE = −½."""
    return norm_parts(xx, -0.5, True, -0.5).to(x.dtype)


@triton.jit
def row_half_logits(x, xh, means_ptr, a2_ptr, b_ptr, mp_ptr, k_start, K, D, offs_d, EVEN_K: tl.constexpr,
                    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr = False):
    """(offs_k, mask_k, ℓ) of one codebook tile for a row kernel that needs only the logits (the encode
    kernel, the Δ pass of Δq alone), from the halved distance s = x·μ − (||x||² + ||μ||²)/2 as the column
    kernels form it (half_distances_logits): x as loaded, ``xh`` = half_row_operand(||x||², x), the
    codes' norm operand ``mp_ptr`` (code_norm_operand) and a2 = 2a per code (``a2_ptr``, doubled by the
    launcher: per code in memory, where doubling a tile's a costs 0.5 instructions per element). Not
    row_tile's −2x: x then reaches the dot from shared memory as loaded, where the −2x copy held 64
    registers per thread at D = 256 (static report: encode 160 → 128 registers, two CTAs per SM). The
    values of row_tile's logits exactly (the factors are powers of two)."""
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = code_mask(offs_k, K, EVEN_K)
    # b stands in for v, and without mm_ptr the norms come from the tile: neither is read, so the compiler
    # drops the load and the sums
    mu, _, a2, b, _ = load_codes(means_ptr, a2_ptr, b_ptr, b_ptr, None, offs_k, mask_k, D, offs_d, WIDE)
    s = tl.dot(xh, tl.trans(load_code_parts(mp_ptr, offs_k, mask_k, WIDE)),
               mma(x, tl.trans(mu), None, DOT_PRECISION, True), input_precision=DOT_PRECISION)
    _, logits, _ = half_distances_logits(s, a2[None, :], b[None, :], mask_k[None, :])
    return offs_k, mask_k, logits


@triton.jit
def row_operands(x, xx, NORM_DOT: tl.constexpr):
    """(x, xp) as row_tile takes them: with NORM_DOT, −2x (exact) and the rows' norm operand of ||x||²
    (norm_parts); else x as it is, and xx in xp's place (unread)."""
    if NORM_DOT:
        return x * -2.0, norm_parts(xx, 1.0, True).to(x.dtype)
    else:
        return x, xx


@triton.jit
def split_hi_lo(t, OP_DTYPE: tl.constexpr):
    """fp32 t as hi + lo, two tiles of the half type OP_DTYPE, for a dot that must be fp32-accurate.
    bf16: hi = t with its low 16 bits cleared, i.e. truncated to bf16 (one LOP3, exact in both types),
    and lo = t − hi (exact) rounded to bf16: |t − hi| < 2⁻⁷|t|, so |t − hi − lo| ≤ 2⁻¹⁶|t|, one bit
    less than with hi rounded (2⁻¹⁷), for one instruction per element less (static report: rounding
    hi and converting it back costs an F2F and an unpack). fp16: hi = t rounded.

    OP_DTYPE fp32 (mma's tf32x3): two fp32 tiles of exact tf32 values (their low 13 bits clear, so a
    tf32 dot reads them without rounding): hi rounded to nearest, ties away from zero, as cvt.rna.tf32
    does (+ half a tf32 ulp on the bits, then the mask), lo the rest truncated: |lo| ≤ 2⁻¹¹|t| and
    |t − hi − lo| < 2⁻²¹|t| (for |t| above ~2⁻¹¹⁵, where the rest is still a normal number). Here hi is
    rounded, not truncated as for bf16: the three dots leave lo·lo out, and a truncated hi doubles |lo|,
    so quadruples that term (2⁻²⁰ against 2⁻²² of a product); an fp32 case of tests/random_sweep.py
    with a distance cancelled down to 1/200 of the norms failed by that (2026-12-05). A non-finite t,
    or |t| within half a tf32 ulp of fp32's largest, gives a non-finite part (a non-finite row's results
    are NaN anyway: the NaN policy)."""
    if OP_DTYPE == tl.float32:
        hi = ((t.to(tl.int32, bitcast=True) + 4096) & -8192).to(tl.float32, bitcast=True)
        return hi, ((t - hi).to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    if OP_DTYPE == tl.bfloat16:
        hi = (t.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    else:
        hi = t.to(OP_DTYPE).to(tl.float32)
    return hi.to(OP_DTYPE), (t - hi).to(OP_DTYPE)


@triton.jit
def first_argmax(t, t_max, BLOCK_K: tl.constexpr):
    """Column (int32) of each row's first maximum in a (rows, BLOCK_K) tile, given the row maxima
    ``t_max`` (ties: the first, as torch.argmax): the smallest column equal to it. Cheaper than
    tl.max(..., return_indices=True), whose reduction carries (value, index) pairs: static report
    (bf16, D = 64) −0.9 instructions per element per argmax in the forward, −1.5 in hard mode's second."""
    return tl.min(tl.where(t == t_max[:, None], tl.arange(0, BLOCK_K)[None, :], BLOCK_K), axis=1)


@triton.jit
def row_block_offsets(BLOCK_N: tl.constexpr, D, offs_d):
    """Element offsets (BLOCK_N, BLOCK_D) of a row kernel's row block (program_id(0)) in an (N, D) tensor,
    as a uniform int64 base plus int32 offsets within the block (< BLOCK_N·D). An epilogue indexing with
    offs_n·D + offs_d shares the prologue's 64-bit per-row products, which the compiler then keeps live
    across the loop and ptxas spills (static report, D = 128 hard: the forward 40 → 0 B, dx 24 → 0 B)."""
    return tl.program_id(0).to(tl.int64) * BLOCK_N * D + (tl.arange(0, BLOCK_N)[:, None] * D + offs_d[None, :])


@triton.jit
def code_row_distance(x_ptr, means_ptr, mm_ptr, code, xx, nd, mask_nd, D, offs_d):
    """(μ_code as stored, raw d) of each row and one code per row (the hard sample), after a row kernel's
    loop: the mean gathered and x reloaded at the row tile's offsets ``nd`` (reloaded rather than kept
    live across the loop: it spilled 200 B at D = 128 in the forward), raw d = ||x||² + ||μ||² − 2 x·μ in
    fp32, unclamped, with ||μ||² from ``mm_ptr`` as in the loop. The forward's hard latent_nll and dx's
    clamp for the sample's term both use it."""
    mu = tl.load(means_ptr + code[:, None] * D + offs_d[None, :], mask=mask_nd, other=0.0)
    xf = tl.load(x_ptr + nd, mask=mask_nd, other=0.0).to(tl.float32)
    mm = tl.load(mm_ptr + code, mask=code >= 0, other=0.0)
    return mu, xx + mm - 2.0 * tl.sum(xf * mu.to(tl.float32), axis=1)


@triton.jit
def nonempty_range(lo, hi, ASSUME: tl.constexpr = True):
    """(lo, hi) of a main loop that carries a dot accumulator (dx's, dμ's, the split forward's), told to
    the compiler to be non-empty: every launcher gives each split at least one tile (config.split_codes,
    config.split_rows, K, N ≥ 1; tests/test_autotune.py checks it). Without it the loop has a zero-trip path whose zeroing of the
    accumulator lies, in the PTX, between the loop's last asynchronous wgmma and its wait after the loop,
    and ptxas then serialises every wgmma of the kernel (its warning C7515: each waits for the one
    before; the static report's "wgmma" column): dx and dμ at every anchor shape, and the split forward
    at D = 32. Elsewhere it only moved registers (encode, fp32 tf32x3 at D = 256: 8 → 152 B of spills;
    the unsplit fp32 forward at D = 128: 1420 → 1564 B), so the Δ, q̄ and encode loops and the unsplit
    forward's go without, except the unsplit forward with the norm dot (row_tile), whose second wgmma
    group had ptxas serialise it. ASSUME False (config.serial_wgmma: for side-by-side timing) leaves it
    out."""
    if ASSUME:
        tl.assume(hi > lo)
    return lo, hi


@triton.jit
def split_code_range(codes_per_split, K):
    """(split, first code, end code) of this program's share of the codebook: split = program_id(1),
    codes_per_split a whole number of tiles (config.split_codes; one split covers all K). int32 is
    enough: there are several splits only while N < 2·SMs·BLOCK_N, so split·N·D stays far below 2³¹,
    and the int64 split cost the encode kernel half its resident warps at D = 128 (static report)."""
    split = tl.program_id(1)
    k_lo = split * codes_per_split
    return split, k_lo, tl.minimum(k_lo + codes_per_split, K)


@triton.jit
def in_first_split(mask, split):
    """``mask`` where this program is split 0 of its rows' codebook (the one that writes their per-row
    outputs), else all False. A select on the block rather than ``mask & (split == 0)``: Triton's
    interpreter (3.6–3.9) gives a scalar compare the data type of its operands when it is broadcast
    (int32 here), and 3.9's masked loads and stores refuse a mask that is not bool ("mask has
    unsupported dtype"; tests/test_bounds.py checks every mask). Compiled code is the same either way
    (the static report, triton 3.6 and 3.7)."""
    return tl.where(split == 0, mask, False)


@triton.jit
def split_row_range(rows_per_split, N):
    """(split, first row, end row) of a column kernel's share of the rows: split = program_id(1) (int64),
    rows_per_split a whole number of row tiles (config.split_rows)."""
    split = tl.program_id(1).to(tl.int64)
    row_lo = split * rows_per_split
    return split, row_lo, tl.minimum(row_lo + rows_per_split, N)


@triton.jit
def tile_code(idx, k_start, BLOCK_K: tl.constexpr):
    """Per-row codes ``idx`` (int64, < 2³¹: checks.MAX_K; −1 for none) as int32 positions in the code
    tile that starts at k_start, −1 outside it: one-hot compares against tl.arange(0, BLOCK_K) then run
    in 32 bits (an int64 compare per element cost the hard-mode dμ kernel ~10 instructions per
    element), and so does this per-row arithmetic (one unsigned compare for both bounds)."""
    rel = idx.to(tl.int32) - tl.cast(k_start, tl.int32)
    return tl.where(rel.to(tl.uint32, bitcast=True) < BLOCK_K, rel, -1)


@triton.jit
def load_columns(ptr, offs_n, N, STRIDE: tl.constexpr, START: tl.constexpr):
    """Columns START .. START + 3 of fp32 records of STRIDE values per row, for rows ``offs_n`` (0 where
    offs_n ≥ N): one (rows, 4) tile, split into its columns."""
    rec = tl.load(ptr + START + offs_n[:, None] * STRIDE + tl.arange(0, 4)[None, :], mask=(offs_n < N)[:, None],
                  other=0.0)
    even, odd = tl.split(tl.reshape(rec, (offs_n.shape[0], 2, 2)))  # columns (0, 2) and (1, 3)
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def load_row_record(rec_ptr, offs_n, N):
    """The first eight columns (R_MQ .. R_DQ, in that order) of (N, N_ROW) fp32 row records for rows
    ``offs_n`` (0 where offs_n ≥ N): one (rows, 8) tile, split as load_columns splits four."""
    rec = tl.load(rec_ptr + offs_n[:, None] * N_ROW + tl.arange(0, 8)[None, :], mask=(offs_n < N)[:, None],
                  other=0.0)
    even, odd = tl.split(tl.reshape(rec, (offs_n.shape[0], 2, 2, 2)))  # [r, i, j]: column 4i + 2j (+ 1)
    c04, c26 = tl.split(even)
    c15, c37 = tl.split(odd)
    c0, c4 = tl.split(c04)
    c2, c6 = tl.split(c26)
    c1, c5 = tl.split(c15)
    c3, c7 = tl.split(c37)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def load_stats(stats_ptr, offs_n, N):
    """The forward's four per-row softmax statistics of rows ``offs_n`` (see M_Q .. LOG2S_Y), as
    (m_q, log2s_q, m_y, log2s_y)."""
    return load_columns(stats_ptr, offs_n, N, N_STATS, 0)


@triton.jit
def load_row_vec(ptr, offs_n, N):
    """A per-row fp32 vector, or zeros when ``ptr`` is None (an absent upstream gradient)."""
    if ptr is None:
        return tl.zeros(offs_n.shape, tl.float32)
    else:
        return tl.load(ptr + offs_n, mask=offs_n < N, other=0.0)


def y_scale(tau):
    """log2(e)/τ: the one factor turning ℓ + g into the log2-unit exponent of y, shared by every kernel."""
    return LOG2E.value / tau


def dot_precision_for(x, dot_precision):
    """The tl.dot input precision: the requested one for fp32 inputs, native for half inputs."""
    return dot_precision if x.dtype == torch.float32 else "ieee"


TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def split_parts(n, *shape, device):
    """An fp32 buffer for the partial results of n splits (of the codebook or of the rows): (n, *shape),
    or ``shape`` itself for one split. The kernels address it as split · size + offset either way, and
    with one split ``sum_splits`` hands it on as it is: no torch op (on a GPU each costs host time)."""
    return torch.empty(shape if n == 1 else (n, *shape), dtype=torch.float32, device=device)


def sum_splits(t, n):
    """The sum of ``split_parts``' n partials, in a fixed order (deterministic)."""
    return t if n == 1 else t.sum(0)


@triton.jit
def _sum_splits_rows(ptr, S, L, rows, mask):
    """Σ_s ptr[s, rows] of an (S, L) fp32 buffer, the splits added in order (deterministic)."""
    total = tl.zeros(rows.shape, tl.float32)
    for s in range(S):
        total += tl.load(ptr + s * tl.cast(L, tl.int64) + rows, mask=mask, other=0.0)
    return total


@triton.jit
def _finish_splits_kernel(acc_ptr, sum_ptr, base_ptr, out_ptr, v0_ptr, v0_out_ptr, v1_ptr, v1_out_ptr, S, L, D,
                          scale, divisor, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    # 64-bit offsets: rows·D and s·L·D may pass 2³¹ (dx's rows·D at N·D ≥ 2³¹)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = rows < L
    if acc_ptr is not None:
        total = _sum_splits_rows(sum_ptr, S, L, rows, mask)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            at = rows[:, None] * D + cols[None, :]
            tile_mask = mask[:, None] & (cols < D)[None, :]
            acc = tl.zeros((BLOCK_L, BLOCK_D), tl.float32)
            for s in range(S):  # in order, as _sum_splits_rows
                acc += tl.load(acc_ptr + s * tl.cast(L, tl.int64) * D + at, mask=tile_mask, other=0.0)
            base = tl.load(base_ptr + at, mask=tile_mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + at, (scale * (acc - base * total[:, None])).to(out_ptr.dtype.element_ty), mask=tile_mask)
    if v0_ptr is not None:
        tl.store(v0_out_ptr + rows, tl.div_rn(_sum_splits_rows(v0_ptr, S, L, rows, mask), divisor), mask=mask)
    if v1_ptr is not None:
        tl.store(v1_out_ptr + rows, tl.div_rn(_sum_splits_rows(v1_ptr, S, L, rows, mask), divisor), mask=mask)


def finish_splits(n, acc=None, sums=None, base=None, scale=1.0, vecs=(), divisor=1.0):
    """The epilogue of a pass that wrote ``split_parts`` for n splits, in one launch (each torch op it
    replaces costs a launch and dispatch on a GPU): with ``acc`` (n, L, D) and ``sums`` (n, L) partials,
    scale·(Σ acc − base·Σ sums) in base's dtype (dx = −2 (acc − x Σ dd), dμ = acc − μ Σ e); with
    ``vecs``, up to two vectors' partials (n, L) each, their sums divided by ``divisor``, fp32 (L,). The
    splits are added in order (deterministic; one split's buffers come without the split axis, as
    ``split_parts`` makes them). With one split and an fp32 ``base`` the result is written over ``acc``
    (a scratch buffer: no second (L, D) fp32 tensor at the peak). Returns (the first or None, a list of
    the vectors' results)."""
    assert len(vecs) <= 2, "finish_splits takes at most two vectors"
    dev = (base if acc is not None else vecs[0]).device
    L, D = base.shape if acc is not None else (vecs[0].shape[-1], 0)
    out = None if acc is None else acc if n == 1 and base.dtype == torch.float32 else torch.empty_like(base)
    vec_out = [torch.empty(L, dtype=torch.float32, device=dev) for _ in vecs]
    v0, v1 = (list(zip(vecs, vec_out)) + [(None, None)] * 2)[:2]
    _finish_splits_kernel[(triton.cdiv(L, 32),)](acc, sums, base, out, *v0, *v1, n, L, D, float(scale), float(divisor),
                                                 BLOCK_L=32, BLOCK_D=min(block_d(D), 64) if D else 16, **FP_FUSION)
    return out, vec_out


def interpreter_operand(t):
    """The interpreter's bf16/fp16 ``tl.dot`` returns garbage (see docs/design.md §6):
    launchers hand it fp32 copies of half operands. A no-op on GPUs."""
    if INTERPRET and t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t
