"""impl="torch"'s per-element work in C: everything of a row block's forward and backward (eager.py)
but its matrix products, one row at a time while the row's K values stay in the CPU's L1 cache, the
rows over torch's OpenMP threads.

In torch ops a 512 × 512 block makes ~15 passes over memory each way, each a dispatch of its own
(~16 µs a pass and ~5 µs of Python and dispatch); here the forward is five passes over a row (six
at τ ≠ 1) and the backward three, the products staying with torch (MKL). The formulas, shifts and
NaN policy are eager.py's, element for element (see there); the differences are rounding: the sums
run in SIMD lanes, ``exp`` is a polynomial of ~1 ulp in fp32 (libm's in fp64) and log Σ comes from
the sum itself. Where the distance clamp at 0 is active the forward stores d·a as −0.0 (the same
value everywhere it is read), and the backward reads the sign as the mask that stops the gradient
there (NaN stops it as well). Given no noise tensor, the forward draws each row's noise as it
reaches the row (the noise's C twin, noise.C_ROW_SOURCE, compiled into this library: the same bits;
its log's only products inside sums are exact, so the compiler's contraction of multiply-adds, on
here, cannot change them). It keeps d·a and y, not q: per row 1 / Σ_k exp(ℓ − m), from which the
backward forms q again with the forward's operations (the same bits), one row at a time in a buffer
of its thread.

Built on first use with the system C compiler (cbuild.py); where none builds it, or with
``GMVQ_C_ROWS=0`` (read at each call), eager.py runs the same steps in torch ops.
"""
import ctypes

import torch

from . import cbuild
from .noise import C_ROW_SOURCE, split_seed
from .spec import compiler_marks

C_ROWS_ENV = "GMVQ_C_ROWS"
_CHUNK = 32  # rows a thread takes at a time; the column sums add per chunk, in chunk order

# One body, compiled for float and for double (REAL, UINT, EXP, SFX). Vectorised by the compiler: the
# row sums and maxima are OpenMP SIMD reductions, selects are bit selects (keep); the rows go to OpenMP
# threads in chunks of CHUNK (-fopenmp, which links the libgomp torch has loaded; where the compiler has
# no OpenMP, -fopenmp-simd: one thread).
_BODY = r"""
static int64_t SFX(first_nan)(const REAL *v, int64_t K) {
    int64_t k = 0;
    while (v[k] == v[k]) k++;
    return k;
}

static void SFX(merge)(const REAL *part, int64_t chunks, int64_t K, REAL *out) {
    /* out (K) = Σ over the chunks' partial sums, in chunk order: the same bits for any thread count */
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t k = 0; k < K; k++)
            out[k] += part[c * K + k];
}

int SFX(gmvq_rows_forward)(
        int64_t n, int64_t K, REAL *G, const REAL *xsq, const REAL *mm, const REAL *a, const REAL *b,
        const REAL *noise, int64_t n0, uint32_t k0, uint32_t k1, REAL tau, int hard, REAL *y, int64_t *codes,
        int64_t *top, REAL *m_out, REAL *q_inv, REAL *lse, REAL *entropy, REAL *q_ell, REAL *latent_nll,
        REAL *q_sum) {
    /* G (n, K): x·μ_k on entry, d·a on return; noise (n, K), or NULL: then row r's is drawn here, that of
       row n0 + r for the key (k0, k1) (noise.py's gumbel_row: gumbel_noise's bits); y (n, K): the soft
       sample; the row outputs, q_inv = 1 / Σ_k exp(ℓ − m) (q = exp(ℓ − m)·q_inv, as the backward forms
       it again); q_sum (K) += Σ_rows q. Returns −1 where out of memory (nothing written then), else 0. */
    const int64_t chunks = (n + CHUNK - 1) / CHUNK, J = (K + 3) / 4, threads = THREADS;
    /* the chunks' partial column sums, then per thread a row's q and, drawn here, its noise (in cache) */
    REAL *part = calloc((size_t)((chunks + threads) * K), sizeof(REAL));
    float *drawn = noise ? NULL : malloc((size_t)(threads * 4 * J) * sizeof(float));
    if (!part || (!noise && !drawn)) {
        free(part);
        free(drawn);
        return -1;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
      REAL *qs = part + c * K, *qr = part + (chunks + THREAD) * K;
      for (int64_t r = c * CHUNK; r < n && r < (c + 1) * CHUNK; r++) {
        REAL *da = G + r * K, *yr = y + r * K;
        const REAL *g = noise + r * K;
        if (!noise) {  /* the row's noise, then in y's row, where the pass below reads it in place */
            float *gr = drawn + THREAD * 4 * J;
            gumbel_row(gr, (uint64_t)n0 + (uint64_t)r, J, k0, k1);
            for (int64_t k = 0; k < K; k++)
                yr[k] = gr[k];
            g = yr;
        }
        const REAL xs = xsq[r];
        REAL m = -INFINITY;
        int nan = 0;
        #pragma omp simd reduction(max:m) reduction(|:nan)
        for (int64_t k = 0; k < K; k++) {
            REAL d = (xs - 2 * da[k]) + mm[k];  /* the reference's order of sums */
            d = d >= 0 ? d : (d != d ? d : -(REAL)0);  /* clamp: −0 marks it, NaN stays */
            da[k] = d * a[k];
            REAL l = b[k] - da[k];
            qr[k] = l;
            m = l > m ? l : m;
            nan |= l != l;
        }
        /* ℓ's argmax: its first maximum, found as the first ℓ − m = 0 (NaN counts as the largest) */
        int64_t best = K;
        m = nan ? NAN : m;
        REAL s = 0, h = 0;
        #pragma omp simd reduction(+:s, h) reduction(min:best)
        for (int64_t k = 0; k < K; k++) {
            REAL t = qr[k] - m, e = EXP(t);
            best = t == 0 && k < best ? k : best;
            qr[k] = e;
            s += e;
            h += e * t;
        }
        best = nan ? SFX(first_nan)(da, K) : best < K ? best : 0;  /* no ℓ − m = 0: a row of −inf */
        const REAL inv = 1 / s;
        REAL my = -INFINITY;
        int nan_y = 0;
        #pragma omp simd reduction(max:my) reduction(|:nan_y)
        for (int64_t k = 0; k < K; k++) {
            qr[k] *= inv;
            qs[k] += qr[k];
            REAL t = (b[k] - da[k]) + g[k];
            yr[k] = t;
            my = t > my ? t : my;
            nan_y |= t != t;
        }
        if (tau != 1) {
            my /= tau;
            #pragma omp simd
            for (int64_t k = 0; k < K; k++)
                yr[k] /= tau;
        }
        int64_t t_best = K;
        my = nan_y ? NAN : my;
        REAL sy = 0;
        #pragma omp simd reduction(+:sy) reduction(min:t_best)
        for (int64_t k = 0; k < K; k++) {
            REAL t = yr[k] - my;
            t_best = t == 0 && k < t_best ? k : t_best;
            yr[k] = EXP(t);
            sy += yr[k];
        }
        /* (ℓ + g)/τ is NaN exactly where d·a is (g, τ finite); y is all NaN by now */
        t_best = nan_y ? SFX(first_nan)(da, K) : t_best < K ? t_best : 0;
        const REAL inv_y = 1 / sy;
        REAL lat = 0;
        #pragma omp simd reduction(+:lat)
        for (int64_t k = 0; k < K; k++) {
            yr[k] *= inv_y;
            lat += yr[k] * da[k];
        }
        const REAL log_sum = LOG(s);
        codes[r] = best;
        top[r] = t_best;
        m_out[r] = m;
        lse[r] = m + log_sum;
        q_ell[r] = h * inv;
        entropy[r] = log_sum - h * inv;
        latent_nll[r] = hard ? da[t_best] : lat;
        q_inv[r] = inv;
      }
    }
    SFX(merge)(part, chunks, K, q_sum);
    free(part);
    free(drawn);
    return 0;
}

/* a where c, else +0, by its bits: a branch-free select. Written as a conditional, gcc threads it
   into branches and vectorises the loop for AVX-512 only (AVX2 builds ran it scalar, ~4x slower) */
static inline REAL SFX(keep)(int c, REAL a) {
    union { REAL f; UINT i; } u = {a};
    u.i &= -(UINT)c;
    return u.f;
}

static inline __attribute__((always_inline)) REAL SFX(backward_row)(
        const int has_y, const int has_c, int64_t K, REAL *er, const REAL *dar, const REAL *qr, const REAL *yr,
        const REAL *a, const REAL *b, const REAL *gq, REAL gq_best, REAL dy, REAL row, REAL h, REAL mr,
        REAL gl_soft, REAL gl_hard, int64_t s, REAL *pdb, REAL *pga, REAL *pcs) {
    /* one row's e = E·a into er, its Σ_k e returned; has_y and has_c are constants where it is inlined
       (one vectorised loop for each case, no per-element test of what is absent) */
    REAL es = 0;
    #pragma omp simd reduction(+:es)
    for (int64_t k = 0; k < K; k++) {
        REAL dl = 0;
        if (has_y)
            dl = (er[k] - dy) * yr[k];
        if (has_c)
            dl += qr[k] * (((gq[k] - gq_best) + row) - h * ((b[k] - dar[k]) - mr));
        pdb[k] += dl;
        REAL E = (dl - gl_soft * yr[k]) - SFX(keep)(k == s, gl_hard);
        pga[k] += (dar[k] / a[k]) * E;
        REAL ek = E * a[k];
        ek = SFX(keep)(!((dar[k] != dar[k]) | (signbit(dar[k]) != 0)), ek);  /* 0 where the clamp stopped d */
        er[k] = ek;
        pcs[k] += ek;
        es += ek;
    }
    return es;
}

int SFX(gmvq_rows_backward)(
        int64_t n, int64_t K, REAL *e, int has_y, int has_c, const REAL *da, const REAL *q_inv, const REAL *y,
        const REAL *v, const REAL *a, const REAL *b, const REAL *gs_t, const REAL *glat_t, const REAL *glat,
        const REAL *glse, const REAL *gH, const REAL *gq, const int64_t *top, const int64_t *best,
        const int64_t *sample, const REAL *m, const REAL *q_ell, REAL *e_sum, REAL *db, REAL *ga, REAL *cs) {
    /* e (n, K): (Ḡ_z/τ)·μ_k on entry (zeros without Ḡ_z), on return e = E·a (eager._backward_block's,
       the clamp's mask applied); has_y: any of Ḡ_z, Ḡ_s, Ḡ_lat; has_c: any of Ḡ_lse, Ḡ_q̄, Ḡ_H;
       gs_t, glat_t: Ḡ_s/τ, Ḡ_lat/τ; gq: Ḡ_q̄/N (K, zeros without it); any other upstream term NULL
       where absent; sample: the hard sample codes, NULL when soft; m, q_inv: the forward's, from which
       q is formed again per row (the forward's operations: the same bits). e_sum (n) = Σ_k e; db, ga,
       cs (K) += Σ_rows dℓ, (d·a/a)·E, e. Returns −1 where out of memory (nothing written then), else 0. */
    const int64_t chunks = (n + CHUNK - 1) / CHUNK, threads = THREADS;
    /* the chunks' partial column sums, then per thread a row's q (in cache) */
    REAL *part = calloc((size_t)((3 * chunks + threads) * K), sizeof(REAL));
    if (!part)
        return -1;
    #pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
      REAL *pdb = part + c * K, *pga = part + (chunks + c) * K, *pcs = part + (2 * chunks + c) * K;
      REAL *qr = part + (3 * chunks + THREAD) * K;
      for (int64_t r = c * CHUNK; r < n && r < (c + 1) * CHUNK; r++) {
        REAL *er = e + r * K;
        const REAL *dar = da + r * K, *yr = y + r * K;
        const REAL zs = gs_t ? gs_t[r] : 0, zl = glat_t ? glat_t[r] : 0, gl = glat ? glat[r] : 0;
        const REAL h = gH ? gH[r] : 0;
        /* Y shifted by its value at the likeliest sample code (Y − Δy cancels where y is peaked) */
        const int64_t t = top[r];
        const REAL y_top = (er[t] + zs * v[t]) + dar[t] * zl;
        const REAL gq_best = gq[best[r]];  /* and Ḡ_q̄ by its value at q's likeliest code */
        REAL dy = 0, dq = 0;
        if (has_y) {
            #pragma omp simd reduction(+:dy)
            for (int64_t k = 0; k < K; k++) {
                REAL Y = ((er[k] + zs * v[k]) + dar[k] * zl) - y_top;
                er[k] = Y;
                dy += yr[k] * Y;
            }
        }
        if (has_c) {
            const REAL mr = m[r], inv = q_inv[r];
            #pragma omp simd reduction(+:dq)
            for (int64_t k = 0; k < K; k++) {
                qr[k] = EXP((b[k] - dar[k]) - mr) * inv;
                dq += qr[k] * (gq[k] - gq_best);
            }
        }
        const REAL row = ((glse ? glse[r] : 0) + h * q_ell[r]) - dq;
        const REAL gl_soft = sample ? 0 : gl, gl_hard = sample ? gl : 0;
        const int64_t s = sample ? sample[r] : -1;
        REAL es;
        if (has_y && has_c)
            es = SFX(backward_row)(1, 1, K, er, dar, qr, yr, a, b, gq, gq_best, dy, row, h, m[r], gl_soft, gl_hard,
                                   s, pdb, pga, pcs);
        else if (has_y)
            es = SFX(backward_row)(1, 0, K, er, dar, qr, yr, a, b, gq, gq_best, dy, row, h, m[r], gl_soft, gl_hard,
                                   s, pdb, pga, pcs);
        else
            es = SFX(backward_row)(0, 1, K, er, dar, qr, yr, a, b, gq, gq_best, dy, row, h, m[r], gl_soft, gl_hard,
                                   s, pdb, pga, pcs);
        e_sum[r] = es;
      }
    }
    SFX(merge)(part, chunks, K, db);
    SFX(merge)(part + chunks * K, chunks, K, ga);
    SFX(merge)(part + 2 * chunks * K, chunks, K, cs);
    free(part);
    return 0;
}
"""

# A buffer per thread (a row's q, and its noise where the forward draws it): OpenMP's thread numbers,
# or one thread where the compiler has no OpenMP (-fopenmp-simd)
_THREADS = r"""
#ifdef _OPENMP
#include <omp.h>
#define THREADS omp_get_max_threads()
#define THREAD omp_get_thread_num()
#else
#define THREADS 1
#define THREAD 0
#endif
"""

# fp32 exp for the forward's softmaxes: exp(x) = 2^n · p(r), x = n·ln 2 + r with |r| ≤ ln 2 / 2, p the
# degree-7 Taylor polynomial (truncation 5e-9 relative, below fp32's ulp); 2^n applied as two normal
# powers so that results below 2^−126 round once into fp32's subnormals, as libm's. Inputs are ≤ 0,
# −inf or NaN here; NaN stays NaN. Branch-free, so the loops that call it vectorise.
_EXP_F32 = r"""
static inline float exp_f32(float x) {
    union { float f; int32_t i; } f, s1, s2, c = {x}, lo = {-104.0f};
    /* x = max(x, −104) (e^−104 rounds to 0 in fp32; NaN stays NaN) by a bit select: written as a
       conditional, gcc threads the branch through the constant x = −104 and vectorises the loops
       that call this for AVX-512 only (AVX2 builds ran them scalar, ~3x slower) */
    int32_t below = -(int32_t)(x < -104.0f);
    c.i = (c.i & ~below) | (lo.i & below);
    x = c.f;
    f.f = x * 1.44269504088896341f + 12582912.0f;    /* n = round(x / ln 2) in the low bits */
    float n = f.f - 12582912.0f;
    int32_t ni = f.i - 0x4B400000;
    float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f + r * (4.16666667e-2f + r * (8.33333333e-3f
              + r * (1.38888889e-3f + r * 1.98412698e-4f))))));
    int32_t n1 = ni / 2;
    s1.i = (n1 + 127) << 23;
    s2.i = (ni - n1 + 127) << 23;
    return p * s1.f * s2.f;
}
"""

_SOURCE = ("#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n#define CHUNK " + str(_CHUNK) + "\n" + _THREADS
           + C_ROW_SOURCE + _EXP_F32
           + "#define REAL float\n#define UINT uint32_t\n#define EXP exp_f32\n#define LOG logf\n"
           + "#define SFX(name) name##_f32\n" + _BODY
           + "#undef REAL\n#undef UINT\n#undef EXP\n#undef LOG\n#undef SFX\n"
           + "#define REAL double\n#define UINT uint64_t\n#define EXP exp\n#define LOG log\n"
           + "#define SFX(name) name##_f64\n" + _BODY)

_P, _I = ctypes.c_void_p, ctypes.c_int64  # pointers as ints (tensor.data_ptr()), int64_t


def _declare(lib):
    for sfx, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"gmvq_rows_forward_{sfx}")
        fwd.argtypes = [_I, _I] + [_P] * 6 + [_I, ctypes.c_uint32, ctypes.c_uint32, real, ctypes.c_int] + [_P] * 10
        fwd.restype = ctypes.c_int
        bwd = getattr(lib, f"gmvq_rows_backward_{sfx}")
        bwd.argtypes = [_I, _I, _P, ctypes.c_int, ctypes.c_int] + [_P] * 21
        bwd.restype = ctypes.c_int


def rows_library():
    """The C row passes (ctypes.CDLL), built on the first call of the process; None with
    ``GMVQ_C_ROWS=0`` or where they could not be built (then a warning, once, says why)."""
    return cbuild.library("gmvq_rows", _SOURCE, env=C_ROWS_ENV, what="impl=\"torch\"'s C row passes",
                          fallback="the same steps run in torch ops, ~1.5x slower", setup=_declare,
                          flags=(["-fopenmp"], ["-fopenmp-simd"]))


def _rows_library_built() -> bool:
    """Whether ``rows_library`` returns the library. As ``rows_library_built`` (below), a constant of a
    traced graph: torch.compile runs it as it traces, not in the graph (functional.resolve_impl's
    choice for a compiled call)."""
    return rows_library() is not None


__getattr__ = compiler_marks(__name__, rows_library_built=("assume_constant_result", _rows_library_built))


def _call(fn, *args, dtype):
    """``fn`` with each tensor of ``args`` as a pointer to a contiguous copy in ``dtype`` where it is not
    one already (an upstream gradient may be an expanded view), None as NULL; raises MemoryError where
    it could not allocate its (n / _CHUNK, K) partial column sums."""
    tensors = [a.to(dtype).contiguous() if isinstance(a, torch.Tensor) and a.is_floating_point()
               else a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    if fn(*(t.data_ptr() if isinstance(t, torch.Tensor) else t for t in tensors)) < 0:
        raise MemoryError("impl=\"torch\": no memory for the C row passes' partial column sums")


def _check_buffer(name, t, dtype=None):
    """A tensor the C passes write in place: contiguous fp32 or fp64 (``dtype`` where given). ``_call``
    would pass a copy of any other, and the C code would write into the copy, or past a half buffer."""
    if t.dtype not in (torch.float32, torch.float64) or (dtype is not None and t.dtype != dtype) or \
            not t.is_contiguous():
        raise TypeError(f"impl=\"torch\"'s C row passes write {name} in place: it must be a contiguous "
                        f"{'float32 or float64' if dtype is None else dtype} tensor; got {t.dtype}, "
                        f"contiguous={t.is_contiguous()}")


def forward(lib, G, x_sq, mm, a, b, noise, tau, hard, seed=None, row_offset=0, y=None):
    """The row outputs of eager._forward_block from G = x·μᵀ (n, K), which becomes d·a in place:
    (y, codes, top, m, q_inv, lse, entropy, q_ell, latent_nll, q_sum), q_inv = 1 / Σ_k exp(ℓ − m)
    (``backward`` forms q from it); y written into ``y`` where given (contiguous, G's dtype). ``noise``
    (n, K), or None: then each row's is drawn as the pass reaches it, that of row row_offset + r of
    ``seed`` (the C twin's, noise.gumbel_noise_numpy's bits)."""
    n, K = G.shape
    _check_buffer("G", G)
    sfx = "f32" if G.dtype == torch.float32 else "f64"
    y = torch.empty_like(G) if y is None else y
    _check_buffer("y", y, G.dtype)
    codes, top = (torch.empty(n, dtype=torch.int64) for _ in range(2))
    m, q_inv, lse, entropy, q_ell, latent_nll = (G.new_empty(n) for _ in range(6))
    q_sum = G.new_zeros(K)
    lo, hi = (0, 0) if noise is not None else split_seed(seed)
    _call(getattr(lib, f"gmvq_rows_forward_{sfx}"), n, K, G, x_sq, mm, a, b, noise, row_offset, lo, hi, tau, int(hard),
          y, codes, top, m, q_inv, lse, entropy, q_ell, latent_nll, q_sum, dtype=G.dtype)
    return y, codes, top, m, q_inv, lse, entropy, q_ell, latent_nll, q_sum


def backward(lib, e, has_gz, da, q_inv, y, v, a, b, gs_t, glat_t, glat, glse, gH, gq, top, best, sample, m, q_ell):
    """eager._backward_block's per-element work, q formed again from m and q_inv (``forward``'s): e (n,
    K) in place (see ``_BODY``; it is read as
    (Ḡ_z/τ)·μᵀ where ``has_gz``, else filled); returns (Σ_k e per row, Σ_rows dℓ, Σ_rows (d·a/a)·E,
    Σ_rows e)."""
    n, K = e.shape
    _check_buffer("e", e)
    sfx = "f32" if e.dtype == torch.float32 else "f64"
    if not has_gz:
        e.zero_()
    has_y, has_c = has_gz or gs_t is not None or glat_t is not None, any(t is not None for t in (glse, gq, gH))
    if not (has_y or has_c):  # no upstream gradient reaches ℓ (every output's is None): e = 0, zeroed above
        return e.new_zeros(n), e.new_zeros(K), e.new_zeros(K), e.new_zeros(K)
    e_sum = e.new_empty(n)
    db, ga, cs = (e.new_zeros(K) for _ in range(3))
    _call(getattr(lib, f"gmvq_rows_backward_{sfx}"), n, K, e, int(has_y), int(has_c), da, q_inv, y, v, a, b, gs_t, glat_t,
          glat, glse, gH, e.new_zeros(K) if gq is None else gq, top, best, sample, m, q_ell, e_sum, db, ga, cs,
          dtype=e.dtype)
    return e_sum, db, ga, cs
