"""Counter-based Gumbel noise shared by the kernels, ``gumbel_noise`` and the reference.

g(seed, n, k) = −log E,  E = −log u,  u = (r >> 9 + ½)·2⁻²³ ∈ (0, 1),  r = word (k mod 4) of
Philox4x32-7(counter = (k div 4, n mod 2³², n div 2³², 0), key = (seed mod 2³², seed div 2³²)).

- The counter carries n in two 32-bit words, so nothing wraps for N·K ≥ 2³² (and K < 2³⁴). One Philox
  call yields four words, i.e. the noise of four neighbouring codes.
- 7 Philox rounds, not the customary 10: Philox4x32-7 already passes TestU01's BigCrush (Salmon et al.,
  SC'11), and each round costs ~2 integer instructions per element in every noise pass.
- The logs run on the GPU's special-function unit (``lg2.approx``: one MUFU op each, against ~25 FP32
  instructions for the accurate libm-style log). Its absolute error (~2⁻²²) would make E = −log u
  inaccurate in relative terms for u near 1, i.e. in the upper tail of g, so there E comes from
  w·p(w) (w = 1 − u < 1/16, exact in fp32), p the cubic closest in relative terms to −log(1 − w)/w on
  that interval (relative error 3·10⁻⁸, 1.4·10⁻⁷ in fp32 arithmetic; its Taylor series needs 6 terms).
  Elsewhere |log₂ u| ≥ 0.093, so E keeps a relative error ≤ 3·10⁻⁶: g is within 3·10⁻⁶ of the exact
  transform of the same u. E is carried in log₂ units (−E·log₂e = log₂ u), so g = −ln E costs one
  MUFU.LG2 and one FFMA, and the word becomes u without an int-to-float conversion: the whole
  transform is ~12 instructions per draw on sm_90 (16 with the Taylor series and natural-unit logs).
  Under Triton's interpreter and in the CPU twin the logs are accurate ones.
- On NVIDIA CUDA tensors and under the interpreter ``gumbel_noise`` runs the very same @triton.jit helper
  as the fused kernels, so the tensor it returns is bit-identical to the noise drawn in-kernel. On a plain
  CPU (and, copied over, on an AMD GPU of a ROCm build: ``checks.can_use_triton``) it runs a CPU twin in
  C (``c_philox``, built on first use with the system's C compiler): the same Philox words bit for bit,
  and in the same pass −log(−log u) with an fp32 log of the twin's own (``_LOG_P``: within 0.86 ulp,
  and accurate in relative terms for u near 1, so the cubic is not needed), the rows over torch's
  OpenMP threads. Its values are the same bits on every CPU (written out operation by operation, no
  contraction left to the compiler), equal to ``words_to_gumbel`` of the words, within 1.4·10⁻⁷ of the
  exact transform (relative to max(|g|, 1); the kernels' within a few ulps). Where no compiler builds
  it, NumPy draws the words and takes NumPy's logs (``bits_to_gumbel_numpy``: within 10⁻⁶ of the C
  twin's values). ``words_to_gumbel`` is the C twin's transform in torch ops (its bits). impl="torch"'s
  C forward pass draws each row's noise with the same C code (``C_ROW_SOURCE``) as it reaches the row.
"""
import ctypes
import threading

import numpy as np
import torch
import triton
import triton.language as tl

from . import cbuild
from .checks import can_use_triton, check_int, check_seed
from .config import CUDAGRAPH_UNSAFE, FP_FUSION, INTERPRET, launch_guard

PHILOX_ROUNDS = 7
_ROUNDS = tl.constexpr(PHILOX_ROUNDS)
_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
SERIES_W = 0.0625  # below this w = 1 − u, E = −log(1 − w) by a cubic in w (the kernels' upper tail)
FAST_LOG = tl.constexpr(not INTERPRET)  # the interpreter has no PTX: it takes the accurate log
NOISE_BLOCKS = (32, 128)  # (BLOCK_N, BLOCK_K) of gumbel_noise's own kernel on a GPU (4 warps)
# A CUDA grid's second axis takes at most 65535 blocks: past that many code blocks (K ≥ 2²³ at BLOCK_K =
# 128; the launch failed before 2026-12-05) gumbel_noise's kernel takes one axis and splits its index
# (FLAT), at an integer division per program (static report: 25.25 → 26.5 instructions per element)
MAX_GRID_Y = 65535


@triton.jit
def _philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr):
    for _ in tl.static_range(N_ROUNDS):
        _c0 = c0
        _c2 = c2
        # the full 64-bit products: ptxas makes each one IMAD.WIDE.U32 with both halves, where
        # tl.umulhi and a separate low multiply were two IMADs (static report: −2 instructions per element)
        p2 = _c2.to(tl.uint64) * 0xCD9E8D57
        p0 = _c0.to(tl.uint64) * 0xD2511F53
        c0 = (p2 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (p0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = p2.to(tl.uint32)
        c3 = p0.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _log2(x, NEG: tl.constexpr):
    """log₂ x (log₂(−x) when NEG): one MUFU.LG2 on a GPU (absolute error ~2⁻²²; the negation is the
    MUFU's operand modifier), the accurate log under the interpreter."""
    if FAST_LOG:
        if NEG:
            return tl.inline_asm_elementwise("{ .reg .f32 t; neg.f32 t, $1; lg2.approx.ftz.f32 $0, t; }", "=f,f",
                                             [x], dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
    else:
        return tl.log2(-x if NEG else x)


@triton.jit
def _rcp(x):
    """1/x: one MUFU.RCP on a GPU (rcp.approx, relative error ≤ 2⁻²³), a division under the interpreter."""
    if FAST_LOG:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 / x


@triton.jit
def _uniform_to_log2u(r):
    # 23 bits: (r >> 9) + ½ needs at most 24 bits, so u and w = 1 − u are exact in fp32 and strictly
    # inside (0, 1). (With 24 bits the top word rounds to u = 1.0 and g = +inf: seen on an H200.)
    # f = 1 + h·2⁻²³ ∈ [1, 2), h = r >> 9, by its bits (exponent 0x3F8), then u = (h + ½)·2⁻²³ = f − (1 − 2⁻²⁴)
    # (Sterbenz) and w = 1 − u, each one exact FADD: no int-to-float conversion
    f = ((r >> 9) + 0x3F800000).to(tl.float32, bitcast=True)
    u = f - 0.9999999403953552
    w = 1.0 - u
    # l = log₂ u, carried in log₂ units (−E·log₂e): for w < SERIES_W by w·p(w), p the cubic closest in
    # relative terms to log₂(1 − w)/w on [0, 1/16] (error 3·10⁻⁸, 1.4·10⁻⁷ in fp32; the Taylor
    # series needs 6 terms; fitted in float64 on Chebyshev nodes by Lawson's reweighting), elsewhere by
    # the log itself (ptxas predicates that MUFU off in the cubic's lanes: no select)
    cubic = w * (-1.4426950216293335 + w * (-0.7213671803474426 + w * (-0.47934234142303467
                                                                      + w * -0.39955323934555054)))
    # E > 0 without a floor: the cubic is a sum of like-signed terms (|l| ≥ 1.4·w ≥ 2⁻²⁴), and the log
    # branch has u ≤ 15/16, where log₂ u ≤ −0.093 lies far beyond the approximate log's error (~2⁻²²).
    return tl.where(w < 0.0625, cubic, _log2(u, False))  # 0.0625: SERIES_W


@triton.jit
def _uniform_to_gumbel(r):
    # g = −ln E = −ln 2·log₂(−l) + ln 2·log₂(log₂ e), l = log₂ u = −E·log₂ e
    return tl.fma(_log2(_uniform_to_log2u(r), True), -0.6931471805599453, 0.3665129244327545)


@triton.jit
def gumbel_tile(seed_lo, seed_hi, offs_n, k_start, BLOCK_K: tl.constexpr, CODES_FIRST: tl.constexpr = False,
                INV_LOG2U: tl.constexpr = False):
    """Gumbel noise of rows ``offs_n`` (int64) and codes k_start .. k_start+BLOCK_K (k_start % 4 == 0):
    code 4j + i takes word i of Philox call j. A (len(offs_n), BLOCK_K) fp32 tile, or (BLOCK_K,
    len(offs_n)) when CODES_FIRST: drawn in the orientation its kernel works in (a transpose after the
    draw is a round trip through shared memory: static report, dμ −1.8 instructions per element at D = 64).
    INV_LOG2U: 1/log₂ u of the same draws instead, i.e. −exp(g)·ln 2 (g = −ln E, E = −ln u = −log₂ u·ln 2):
    what a softmax of ℓ + g at τ = 1 takes, one MUFU.RCP in place of g's second log and the sample's
    exponential (tiles.sample_prob)."""
    tl.static_assert(BLOCK_K % 4 == 0)
    offs_n = offs_n.to(tl.int64)
    j = (k_start // 4 + tl.arange(0, BLOCK_K // 4)).to(tl.uint32)
    n_lo = (offs_n & 0xFFFFFFFF).to(tl.uint32)
    n_hi = (offs_n >> 32).to(tl.uint32)
    if CODES_FIRST:
        c0 = tl.broadcast_to(j[:, None], (BLOCK_K // 4, offs_n.shape[0]))
        c1 = tl.broadcast_to(n_lo[None, :], c0.shape)
        c2 = tl.broadcast_to(n_hi[None, :], c0.shape)
    else:
        c0 = tl.broadcast_to(j[None, :], (offs_n.shape[0], BLOCK_K // 4))
        c1 = tl.broadcast_to(n_lo[:, None], c0.shape)
        c2 = tl.broadcast_to(n_hi[:, None], c0.shape)
    r0, r1, r2, r3 = _philox4x32(c0, c1, c2, tl.zeros(c0.shape, dtype=tl.uint32), seed_lo.to(tl.uint32),
                                 seed_hi.to(tl.uint32), _ROUNDS)
    if CODES_FIRST:
        w = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # (calls, rows, p, q): word 2p + q
        r = tl.reshape(tl.permute(w, (0, 2, 3, 1)), (BLOCK_K, offs_n.shape[0]))
    else:
        r = tl.interleave(tl.interleave(r0, r2), tl.interleave(r1, r3))
    if INV_LOG2U:
        return _rcp(_uniform_to_log2u(r))
    return _uniform_to_gumbel(r)


@triton.jit
def kernel_seed(seed_lo, seed_hi, seed_ptr):
    """The Philox key words (uint32) of a launch: its scalars, or, when it passes ``seed_ptr`` (see
    ``seed_args``), the 0-dim int64 seed read from device memory as the kernel runs."""
    if seed_ptr is not None:
        s = tl.load(seed_ptr)
        return (s & 0xFFFFFFFF).to(tl.uint32), ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        return seed_lo.to(tl.uint32), seed_hi.to(tl.uint32)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "row_offset"])
def _gumbel_noise_kernel(out_ptr, N, K, seed_lo, seed_hi, seed_ptr, row_offset, FLAT: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    seed_lo, seed_hi = kernel_seed(seed_lo, seed_hi, seed_ptr)
    if FLAT:  # one grid axis, the codes' blocks fastest (see MAX_GRID_Y)
        k_blocks = tl.cdiv(K, BLOCK_K)
        n_block, k_block = tl.program_id(0) // k_blocks, tl.program_id(0) % k_blocks
    else:
        n_block, k_block = tl.program_id(0), tl.program_id(1)
    offs_n = n_block.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = k_block.to(tl.int64) * BLOCK_K
    offs_k = k_start + tl.arange(0, BLOCK_K)
    g = gumbel_tile(seed_lo, seed_hi, offs_n + row_offset, k_start, BLOCK_K)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], g, mask=mask)


def as_int64(seed):
    """A seed in [0, 2**64) as the signed int64 with the same bits (identity below 2**63)."""
    if isinstance(seed, torch.SymInt):  # traced by torch.compile: an int64 already, and int() would pin it
        return seed
    seed = int(seed)  # NumPy integers too
    return seed - 2**64 if seed >= 2**63 else seed


def seed_tensor(seed) -> torch.Tensor:
    """The seed as the 0-dim int64 tensor the custom ops take: an int becomes a CPU tensor, a tensor (CPU
    or CUDA, see ``seed_on_device``) passes through.

    A tensor, not an int: under torch.compile a changing int seed on a module attribute would be a
    recompile per step; a tensor is a graph input. ``torch.ones(()) * seed`` rather than
    ``torch.tensor(seed)``, which would pin a symbolic seed's value into the graph."""
    if isinstance(seed, torch.Tensor):
        return seed
    return torch.ones((), dtype=torch.int64) * as_int64(seed)


def split_seed(seed):
    """64-bit seed (int, or int64 tensor in two's complement) -> (lo, hi) 32-bit Philox key words."""
    seed = int(seed) & ((1 << 64) - 1)
    return seed & _MASK32, seed >> 32


def seed_on_device(seed) -> bool:
    """Whether the kernels read the seed from device memory as they run: a 0-dim int64 tensor on a CUDA
    device. Reading it there costs no host sync, and a captured CUDA graph then draws the noise of the
    value it holds at each replay (README, "CUDA graphs")."""
    return isinstance(seed, torch.Tensor) and seed.device.type == "cuda"


def seed_args(seed):
    """(seed_lo, seed_hi, seed_ptr) of a kernel launch (``kernel_seed``): the key words as ints and no
    pointer, or (0, 0, the tensor) for a seed on the device."""
    if seed_on_device(seed):
        return 0, 0, seed
    return (*split_seed(seed), None)


# the two multiply chains of a round, (c0, k0) and (c2, k1), side by side on axis 0 of one array:
# one NumPy call per step of the round for both, half the calls of two separate chains
_PAIR_MUL = np.array([0xD2511F53, 0xCD9E8D57], dtype=np.uint64)[:, None, None]
_BLOCK_CALLS = 32768  # Philox calls per row block (the arrays stay in cache; tuned at N = 1024, K = 512)
# each thread's work buffer for the rounds' three (2, rows, J) uint64 arrays (1.5 MB), kept from call
# to call: allocated afresh per block, glibc mapped and faulted them in again and again (a training step
# of GaussianMixtureVQ(32, 512) on a CPU 0.6–1.4 ms faster in three of four runs where it did, the same
# where it did not: benchmarks/results/cpu-step-2026-12-02b/)
_WORK = threading.local()


def _work_arrays(rows, J):
    """Three contiguous (2, rows, J) uint64 views of this thread's work buffer; fresh arrays, not kept,
    for the one-row blocks of rows of over 4·_BLOCK_CALLS codes."""
    size = 2 * rows * J
    if size > 2 * _BLOCK_CALLS:
        return tuple(np.empty((2, rows, J), dtype=np.uint64) for _ in range(3))
    buf = getattr(_WORK, "buf", None)
    if buf is None:  # one size for every block that fits: a thread allocates it once
        buf = _WORK.buf = np.empty((3, 2 * _BLOCK_CALLS), dtype=np.uint64)
    return tuple(b[:size].reshape(2, rows, J) for b in buf)


def _philox_block(n, J, lo, hi, work):
    """Philox4x32-7 of the calls (j < J, rows ``n``): (E, O), two of the three (2, len(n), J) uint64
    arrays ``work`` (``_work_arrays``), with E = (c0, c2) and O = (c1, c3) on axis 0. A round is
    P = E·(A, B), E = hi(P) swapped ^ O ^ key, O = lo(P) swapped (the swap, P[::-1], is a view); the
    multiplies are exact in 64 bits. Until round 2 mixes them each word depends on the row or on the
    call alone (c0 = j, c1, c2 from n, c3 = 0), so rounds 1 and 2 run on those vectors and round 3 xors
    vectors in (the block ~20 % faster)."""
    m, s = np.uint64(_MASK32), np.uint64(32)
    mul_a, mul_b = (np.uint64(c) for c in (_ROUND_A, _ROUND_B))
    keys = [(np.uint64((lo + r * _KEY_A) & _MASK32), np.uint64((hi + r * _KEY_B) & _MASK32))
            for r in range(PHILOX_ROUNDS)]
    j = np.arange(J, dtype=np.uint64)
    # round 1: (c0, c1, c2, c3) = (j, n mod 2³², n div 2³², 0)
    p_b, p_a = (n >> s) * mul_b, j * mul_a
    row_c0, row_c1 = (p_b >> s) ^ (n & m) ^ keys[0][0], p_b & m
    call_c2, call_c3 = (p_a >> s) ^ keys[0][1], p_a & m
    # round 2: c0 and c2 become full arrays, c1 (per call) and c3 (per row) stay vectors
    p_b, p_a = call_c2 * mul_b, row_c0 * mul_a
    E, O, P = work
    np.bitwise_xor((p_b >> s)[None, :], (row_c1 ^ keys[1][0])[:, None], out=E[0])
    np.bitwise_xor((p_a >> s)[:, None], (call_c3 ^ keys[1][1])[None, :], out=E[1])
    call_c1, row_c3 = p_b & m, p_a & m
    for r in range(2, PHILOX_ROUNDS):
        np.multiply(E, _PAIR_MUL, out=P)
        np.right_shift(P[::-1], s, out=E)
        if r == 2:  # O still vectors, the key folded into them
            E[0] ^= (call_c1 ^ keys[r][0])[None, :]
            E[1] ^= (row_c3 ^ keys[r][1])[:, None]
        else:
            E ^= O
            E ^= np.array(keys[r], dtype=np.uint64)[:, None, None]
        np.bitwise_and(P[::-1], m, out=O)
    return E, O


# The twin's fp32 log, for positive normal x: x = 2^e·m with m ∈ [√½, √2) read from its bits (ix's
# shift is arithmetic), f = m − 1 (exact), log x = e·ln 2 + f − f²/2 + f³·P(f), P of degree 7 fitted in
# float64 to (log1p f − f + f²/2)/f³ on [√½ − 1, √2 − 1], weighted to the relative error of log1p f
# (Lawson's reweighting on Chebyshev nodes: 6·10⁻⁹), ln 2 split hi + lo (e·ln2_hi is exact). Written as
# fp32 operations in one order, in C (fmaf for Horner's steps, built with -ffp-contract=off: no other
# fused multiply-adds) and in torch ops (``_log_f32_torch``), so both give the same bits on any CPU.
_LOG_P = (0.3333333134651184, -0.2500081956386566, 0.20001226663589478, -0.16623356938362122,
          0.14201758801937103, -0.13160182535648346, 0.12761574983596802, -0.07634492963552475)
_LN2_HI, _LN2_LO = 0.693359375, -0.00021219444170128554  # fp32 values: ln 2 = hi + lo to 2⁻³⁶
_SQRT_HALF_BITS = 0x3F3504F3  # √½ in fp32


def _c_float(c):
    """``c`` as a C float literal, exactly (hexadecimal)."""
    return float(np.float32(c)).hex() + "f"


# The twin in C (the same words as _philox_block's, ~6× as fast, and the transform in the same pass),
# built on first use with the system C compiler (CC, else cc, gcc or clang) for this CPU
# (-march=native; -fopenmp as cpu_rows.py's, which links the libgomp torch has loaded) and kept in
# Triton's cache; where it cannot be built the NumPy rounds and NumPy's logs run, with a warning.
# GMVQ_C_PHILOX=0 (read at each call) takes those.
C_PHILOX_ENV = "GMVQ_C_PHILOX"
_C_ROW_SOURCE = r"""
#include <math.h>
#include <stdint.h>
/* Philox4x32-ROUNDS of call j of row n (noise.py's _philox4x32: counter (j, n mod 2^32, n div 2^32, 0),
   key (a, b)), its four words to w. Unsigned 32 x 32 -> 64-bit products (no overflow); the loops over
   j and over a tile's words vectorise. */
static inline void philox(uint32_t j, uint32_t n_lo, uint32_t n_hi, uint32_t a, uint32_t b, uint32_t *w) {
    uint32_t c0 = j, c1 = n_lo, c2 = n_hi, c3 = 0;
    for (int t = 0; t < ROUNDS; t++) {
        uint64_t p2 = (uint64_t)c2 * 0xCD9E8D57u, p0 = (uint64_t)c0 * 0xD2511F53u;
        c0 = (uint32_t)(p2 >> 32) ^ c1 ^ a;
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ b;
        c1 = (uint32_t)p2;
        c3 = (uint32_t)p0;
        a += 0x9E3779B9u;
        b += 0xBB67AE85u;
    }
    w[0] = c0; w[1] = c1; w[2] = c2; w[3] = c3;
}

static inline float log_f32(float x) {  /* noise.py's _log_f32_torch, the same operations */
    union { float f; int32_t i; } v = {x};
    int32_t ix = v.i - SQRT_HALF_BITS;
    float e = (float)(ix >> 23);
    v.i = (ix & 0x7FFFFF) + SQRT_HALF_BITS;
    float f = v.f - 1.0f, z = f * f;
    float p = fmaf(f, P7, P6);
    p = fmaf(p, f, P5); p = fmaf(p, f, P4); p = fmaf(p, f, P3); p = fmaf(p, f, P2); p = fmaf(p, f, P1);
    p = fmaf(p, f, P0);
    float y = fmaf(f * z, p, e * LN2_LO) - 0.5f * z;
    return (f + y) + e * LN2_HI;
}

/* g = -log(-log u), u = (r >> 9 + 1/2) 2^-23 (exact) */
static inline float gumbel_f32(uint32_t r) { return -log_f32(-log_f32(((float)(r >> 9) + 0.5f) * 0x1p-23f)); }

#define TILE 256  /* calls per tile: its 1024 words stay in L1 between the rounds and the transform */

/* the noise of row n, calls j < J, to o[4 j + i] (cpu_rows.py draws a row's noise with it too) */
static inline void gumbel_row(float *o, uint64_t n, int64_t J, uint32_t k0, uint32_t k1) {
    uint32_t lo = (uint32_t)n, hi = (uint32_t)(n >> 32);
    uint32_t w[4 * TILE];
    for (int64_t j0 = 0; j0 < J; j0 += TILE) {
        int64_t jn = J - j0 < TILE ? J - j0 : TILE;
        for (int64_t j = 0; j < jn; j++) philox((uint32_t)(j0 + j), lo, hi, k0, k1, w + 4 * j);
        for (int64_t t = 0; t < 4 * jn; t++) o[4 * j0 + t] = gumbel_f32(w[t]);
    }
}

"""
_C_EXPORTS = r"""
/* calls j < J of rows n0 .. n0 + rows - 1, word i of call j of row r to out[(r * J + j) * 4 + i]: as
   uint32, or with gumbel as its noise g (gumbel_f32) */
void gmvq_philox(void *out, int64_t n0, int64_t rows, int64_t J, uint32_t k0, uint32_t k1, int gumbel) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        uint64_t n = (uint64_t)n0 + (uint64_t)r;
        if (gumbel) {
            gumbel_row((float *)out + r * J * 4, n, J, k0, k1);
        } else {
            uint32_t *o = (uint32_t *)out + r * J * 4;
            for (int64_t j = 0; j < J; j++) philox((uint32_t)j, (uint32_t)n, (uint32_t)(n >> 32), k0, k1, o + 4 * j);
        }
    }
}

void gmvq_words_to_gumbel(const uint32_t *r, float *g, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = gumbel_f32(r[i]);
}
"""


# The row drawing with the constants it names (also in cpu_rows.py's library, which draws a row's noise
# as its forward reaches the row), and the twin's whole source: formed once (c_philox runs at every
# noise call)
C_ROW_SOURCE = "".join(f"#define {k} {v}\n" for k, v in {
    "ROUNDS": PHILOX_ROUNDS, "SQRT_HALF_BITS": _SQRT_HALF_BITS, "LN2_HI": _c_float(_LN2_HI),
    "LN2_LO": _c_float(_LN2_LO), **{f"P{i}": _c_float(c) for i, c in enumerate(_LOG_P)}}.items()) + _C_ROW_SOURCE
_C_TWIN_SOURCE = C_ROW_SOURCE + _C_EXPORTS


def _declare_philox(lib):
    lib.gmvq_philox.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32,
                                ctypes.c_uint32, ctypes.c_int]
    lib.gmvq_philox.restype = None
    lib.gmvq_words_to_gumbel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.gmvq_words_to_gumbel.restype = None


def c_philox():
    """The twin in C (``_C_TWIN_SOURCE`` via ctypes, which lets go of the GIL while it runs: ``gmvq_philox``,
    the rounds with or without the transform, and ``gmvq_words_to_gumbel``, the transform alone), built
    on the first call of the process (cbuild.py); None with ``GMVQ_C_PHILOX=0`` or where it could not be
    built (then a warning, once, says why, and the NumPy rounds and NumPy's logs draw the noise)."""
    return cbuild.library("gmvq_philox", _C_TWIN_SOURCE, env=C_PHILOX_ENV, what="the CPU noise in C",
                          setup=_declare_philox,
                          fallback="the NumPy rounds and NumPy's logs draw it, ~3x slower and within 1e-6 of its "
                                   "values",
                          flags=(["-fopenmp", "-ffp-contract=off"], ["-fopenmp-simd", "-ffp-contract=off"]))


def c_twin_draws(device) -> bool:
    """Whether ``gumbel_noise`` on ``device`` draws with the C twin (a CPU device without the
    interpreter, the library built): then cpu_rows.py's forward may draw the same bits itself."""
    return device.type == "cpu" and not can_use_triton(device) and c_philox() is not None


def _philox_cpu(N, K, seed, row_offset, out):
    """Fill ``out`` (N, ceil(K/4), 4), uint32 or float32: out[n, j, i] = word i of call j of row
    row_offset + n (uint32), or its noise g (float32): by the C twin (``c_philox``: one call, the rows
    over torch's OpenMP threads), else by the NumPy rounds and ``bits_to_gumbel_numpy`` on the calling
    thread, in row blocks, each transformed while it is in cache."""
    lo, hi = split_seed(seed)
    J = out.shape[1]
    gumbel = out.dtype == np.float32
    lib = c_philox()
    if lib is not None:
        lib.gmvq_philox(out.ctypes.data, row_offset, N, J, lo, hi, int(gumbel))
        return
    rows = max(1, _BLOCK_CALLS // J)
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        dst = out[start:stop]
        n = np.arange(row_offset + start, row_offset + stop, dtype=np.uint64)
        E, O = _philox_block(n, J, lo, hi, _work_arrays(len(n), J))
        if gumbel:  # in place: no temporaries
            np.right_shift(E, np.uint64(9), out=E)
            np.right_shift(O, np.uint64(9), out=O)
        dst[:, :, 0], dst[:, :, 1], dst[:, :, 2], dst[:, :, 3] = E[0], O[0], E[1], O[1]
        if gumbel:
            bits_to_gumbel_numpy(dst)


def philox_words_numpy(N: int, K: int, seed: int, row_offset: int = 0) -> np.ndarray:
    """The raw 32-bit Philox word behind g(seed, n, k) for n in [row_offset, row_offset+N), k < K, as an
    (N, K) uint64 array (the CPU twin's: C rounds or NumPy ones, ``_philox_cpu``)."""
    out = np.empty((N, (K + 3) // 4, 4), dtype=np.uint32)
    _philox_cpu(N, K, seed, row_offset, out)
    return out.reshape(N, -1)[:, :K].astype(np.uint64)


def gumbel_noise_numpy(N: int, K: int, seed, row_offset: int = 0) -> torch.Tensor:
    """The CPU twin of the kernels' noise, (N, K) fp32, without the (N, K) words (``_philox_cpu``): by
    the C twin, ``words_to_gumbel`` of ``philox_words_numpy(...)`` bit for bit; by the NumPy fallback,
    ``bits_to_gumbel_numpy`` of them (within 10⁻⁶ of the C twin's values)."""
    g = np.empty((N, (K + 3) // 4, 4), dtype=np.float32)
    _philox_cpu(N, K, seed, row_offset, g)
    return torch.from_numpy(g).view(N, -1)[:, :K].contiguous()


def bits_to_gumbel_numpy(h: np.ndarray) -> np.ndarray:
    """The NumPy fallback's transform, in place on an fp32 array of the words' top 23 bits h = r >> 9:
    u = (h + ½)·2⁻²³ (exact), g = −log(−log u) with NumPy's fp32 logs (accurate in relative terms, also
    for u near 1 where −log u is tiny; g within 10⁻⁶ of the C twin's, not bit for bit)."""
    h += 0.5
    h *= 2.0**-23
    np.log(h, out=h)
    np.negative(h, out=h)
    np.log(h, out=h)
    return np.negative(h, out=h)


def gumbel_noise(N: int, K: int, seed=0, device=None, row_offset: int = 0) -> torch.Tensor:
    """Exactly the (N, K) fp32 Gumbel noise the fused kernels draw for ``seed`` (see module docstring):
    an int in [0, 2**64) or a 0-dim int64 tensor holding its bits, on the CPU (see ``seed_tensor``) or
    on ``device`` when that is a CUDA device (read by the kernel as it runs: ``seed_on_device``).
    ``row_offset``: the noise of rows row_offset .. row_offset + N − 1 of a larger batch. Under
    torch.compile it is the same custom op, so compiled code draws the same bits as eager code (on a
    CPU the C twin: faster than inductor's code for the same transform, benchmarks/README.md, "The CPU
    training step")."""
    device = torch.device(device if device is not None else "cpu")
    # torch.jit.trace hands sizes as 0-dim tensors and records no device argument: there this shape's
    # noise is drawn off the dispatcher, a constant of the trace
    tracing = torch.jit.is_tracing()
    if tracing:
        N, K = int(N), int(K)
    check_int("N", N)
    check_int("K", K)
    check_int("row_offset", row_offset, lo=0)
    check_seed(seed, device)
    return (_draw_gumbel_noise if tracing else _gumbel_noise_op)(N, K, seed_tensor(seed), row_offset, device)


def _draw_gumbel_noise(N, K, seed, row_offset, device):
    """The body of the custom op ``gmvq_kernels::gumbel_noise``."""
    if can_use_triton(device):  # an NVIDIA GPU, or the CPU under the interpreter
        out = torch.empty((N, K), dtype=torch.float32, device=device)
        BLOCK_N, BLOCK_K = (16, 16) if INTERPRET else NOISE_BLOCKS
        n_blocks, k_blocks = triton.cdiv(N, BLOCK_N), triton.cdiv(K, BLOCK_K)
        flat = k_blocks > MAX_GRID_Y
        grid = (n_blocks * k_blocks,) if flat else (n_blocks, k_blocks)
        with launch_guard():
            _gumbel_noise_kernel[grid](out, N, K, *seed_args(seed), row_offset, FLAT=flat, BLOCK_N=BLOCK_N,
                                       BLOCK_K=BLOCK_K, **FP_FUSION)
        return out
    # a CPU, or an AMD GPU (ROCm; the kernel's logs are PTX): the CPU twin, copied over
    return gumbel_noise_numpy(N, K, seed, row_offset).to(device)


# A custom op (opaque to torch.compile, which traces around it): the body is a raw Triton launch or
# the CPU twin (C or NumPy), neither of which it can trace. Kept out of inductor's CUDA graphs
# (config.CUDAGRAPH_UNSAFE).
@torch.library.custom_op("gmvq_kernels::gumbel_noise", mutates_args=(), tags=CUDAGRAPH_UNSAFE)
def _gumbel_noise_op(N: int, K: int, seed: torch.Tensor, row_offset: int, device: torch.device) -> torch.Tensor:
    return _draw_gumbel_noise(N, K, seed, row_offset, device)


@_gumbel_noise_op.register_fake
def _(N, K, seed, row_offset, device):
    return torch.empty((N, K), dtype=torch.float32, device=device)


def _fma32(a, b, c):
    """fp32 a·b + c with one rounding (C's fmaf), through float64: a·b is exact there, then the sum is
    rounded to float64 and to fp32. Two roundings can differ from one, but not on the twin's inputs:
    tests/test_noise.py compares every one of them with the C twin's fmaf."""
    return (a.double() * b + c).float()


def _log_f32_torch(x: torch.Tensor) -> torch.Tensor:
    """The twin's fp32 log of a tensor of positive normal values (see ``_LOG_P``), the C twin's
    ``log_f32`` operation for operation: the same bits."""
    ix = x.view(torch.int32) - _SQRT_HALF_BITS
    e = (ix >> 23).to(torch.float32)
    f = ((ix & 0x7FFFFF) + _SQRT_HALF_BITS).view(torch.float32) - 1.0
    z = f * f
    p = _fma32(f, _LOG_P[7], _LOG_P[6])
    for c in _LOG_P[5::-1]:
        p = _fma32(p, f, c)
    y = _fma32(f * z, p, e * _LN2_LO).sub_(z * 0.5)
    return f.add_(y).add_(e.mul_(_LN2_HI))


def words_to_gumbel(r: torch.Tensor) -> torch.Tensor:
    """g = −log(−log u) of 32-bit words held in an int64 tensor, u = (r >> 9 + ½)·2⁻²³ as in the kernels'
    _uniform_to_gumbel (exact), with ``_log_f32_torch``: the C twin's transform in torch ops, its values
    bit for bit (the tests' statement of what the C code computes). The log keeps its relative accuracy
    for u near 1, where −log u is tiny, so the kernels' cubic is not needed; E = −log u ≥ 2⁻²⁴ > 0, so g
    is finite for every word."""
    u = ((r >> 9).to(torch.float32) + 0.5).mul_(2.0**-23)
    return _log_f32_torch(_log_f32_torch(u).neg_()).neg_()
