"""Lever 15 of benchmarks/README.md: at τ = 1, exp(ℓ + g) = exp(ℓ)/E, so the sample's numerator can be q's
p = exp(ℓ − m) times 1/E instead of a second log and its own exponential. A toy of the forward's loop
(s = x·μᵀ, logits, q's online softmax, the Gumbel noise of the kernels, the sample's online softmax,
acc += p_y·μ), compiled for sm_90 on a CPU in two forms:

- TAU_ONE=0, as the forward: g = noise.gumbel_tile's (two logs), ℓ + g masked, its running max, and
  p_y = exp2((ℓ + g − m_y)·log₂e), the y sums rescaled by their own max;
- TAU_ONE=1: the same Philox words and first log (E in log₂ units), then p_y = p·(1/E) by one
  rcp.approx (``noise.gumbel_tile(..., INV_LOG2U=True)``, as the kernels since item 27; the −ln 2 folded
  into a per-row factor), the y sums rescaled with q's max.

``toy_bwd`` is a backward pass's recompute of q and y from the forward's row statistics (as dx and
dμ do), with y = q·(1/E)·(a per-row factor) at τ = 1.

Both rescale every tile (no lazy rescale) and use the same tiles (64 × 32, 4 warps, bf16, D = 64).
Prints, per form: registers, spills, and the loop's instructions and MUFU ops per (n, k) element.
Run: python benchmarks/results/static-2026-12-04-tau1/toy.py  (output: toy.txt)"""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from gmvq_kernels import devtools, noise, tiles  # noqa: E402

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def toy(x_ptr, mu_ptr, a_ptr, b_ptr, out_ptr, stats_ptr, K, seed_lo, seed_hi, TAU_ONE: tl.constexpr,
        BN: tl.constexpr, BK: tl.constexpr, D: tl.constexpr):
    offs_n = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
    m_q = tl.full((BN,), float("-inf"), tl.float32)
    s_q = tl.zeros((BN,), tl.float32)
    m_y = tl.full((BN,), float("-inf"), tl.float32)
    s_y = tl.zeros((BN,), tl.float32)
    acc = tl.zeros((BN, D), tl.float32)
    k_lo, k_hi = tiles.nonempty_range(0, K)  # no zero-trip path: unserialised wgmma, as the kernels
    for k in range(k_lo, k_hi, BK):
        offs_k = k + tl.arange(0, BK)
        mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
        logits = tl.dot(x, tl.trans(mu)) * tl.load(a_ptr + offs_k)[None, :] + tl.load(b_ptr + offs_k)[None, :]
        m_new = tl.maximum(m_q, tl.max(logits, axis=1))
        alpha = tl.exp2((m_q - m_new) * LOG2E)
        p = tl.exp2((logits - m_new[:, None]) * LOG2E)
        s_q = s_q * alpha + tl.sum(p, axis=1)
        m_q = m_new
        if TAU_ONE:
            # p/E = p·(−log₂ e)/l: the constant goes into the statistics, so p_y = p·rcp(l) (≤ 0: sums negated)
            p_y = p * noise.gumbel_tile(seed_lo, seed_hi, offs_n, k, BK, INV_LOG2U=True)
            beta = alpha  # the y sums follow q's maximum
            m_y = tl.minimum(m_y, tl.min(p_y, axis=1))  # the sample's argmax (most negative p·rcp(l))
        else:
            g = noise.gumbel_tile(seed_lo, seed_hi, offs_n, k, BK)
            noisy = tl.where(offs_k[None, :] < K, logits + g, float("-inf"))
            my_new = tl.maximum(m_y, tl.max(noisy, axis=1))
            beta = tl.exp2((m_y - my_new) * LOG2E)
            p_y = tl.exp2((noisy - my_new[:, None]) * LOG2E)
            m_y = my_new
        s_y = s_y * beta + tl.sum(p_y, axis=1)
        acc = tl.dot(p_y.to(tl.bfloat16), mu, acc * beta[:, None])
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], acc / s_y[:, None])
    tl.store(stats_ptr + offs_n * 4, m_q)
    tl.store(stats_ptr + offs_n * 4 + 1, s_q)
    tl.store(stats_ptr + offs_n * 4 + 2, m_y)
    tl.store(stats_ptr + offs_n * 4 + 3, s_y)


@triton.jit
def toy_bwd(x_ptr, mu_ptr, a_ptr, b_ptr, stats_ptr, out_ptr, K, seed_lo, seed_hi, TAU_ONE: tl.constexpr,
            BN: tl.constexpr, BK: tl.constexpr, D: tl.constexpr):
    """A backward pass's recompute (dx's shape): q and y of each tile from the forward's row statistics,
    then a stand-in use of both (dℓ = q − y into acc += dℓ·μ)."""
    offs_n = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
    m_q = tl.load(stats_ptr + offs_n * 4)
    l2s_q = tl.load(stats_ptr + offs_n * 4 + 1)
    m_y = tl.load(stats_ptr + offs_n * 4 + 2)
    l2s_y = tl.load(stats_ptr + offs_n * 4 + 3)
    acc = tl.zeros((BN, D), tl.float32)
    k_lo, k_hi = tiles.nonempty_range(0, K)
    for k in range(k_lo, k_hi, BK):
        offs_k = k + tl.arange(0, BK)
        mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
        logits = tl.dot(x, tl.trans(mu)) * tl.load(a_ptr + offs_k)[None, :] + tl.load(b_ptr + offs_k)[None, :]
        q = tl.exp2((logits - m_q[:, None]) * LOG2E - l2s_q[:, None])
        if TAU_ONE:  # y = q·(1/E)·(a per-row factor: S_q/S_y and −log₂ e), here m_y
            y = q * noise.gumbel_tile(seed_lo, seed_hi, offs_n, k, BK, INV_LOG2U=True) * m_y[:, None]
        else:
            g = noise.gumbel_tile(seed_lo, seed_hi, offs_n, k, BK)
            noisy = tl.where(offs_k[None, :] < K, logits + g, float("-inf"))
            y = tl.exp2((noisy - m_y[:, None]) * LOG2E - l2s_y[:, None])
        acc = tl.dot((q - y).to(tl.bfloat16), mu, acc)
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], acc)


def report(fn, tau_one, BN=64, BK=32, D=64):
    names = ["x_ptr", "mu_ptr", "a_ptr", "b_ptr", "out_ptr", "stats_ptr"]
    if fn is toy_bwd:
        names = ["x_ptr", "mu_ptr", "a_ptr", "b_ptr", "stats_ptr", "out_ptr"]
    sig = {**{n: "*bf16" if n in ("x_ptr", "mu_ptr") else "*fp32" for n in names}, "K": "i32", "seed_lo": "i32", "seed_hi": "i32", "TAU_ONE": "constexpr",
           "BN": "constexpr", "BK": "constexpr", "D": "constexpr"}
    src = ASTSource(fn, sig, {"TAU_ONE": tau_one, "BN": BN, "BK": BK, "D": D},
                    {(i,): [["tt.divisibility", 16]] for i in range(7)})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    regs, spills, _, serialised = devtools.resource_usage(kernel)
    sass = devtools.read_sass(kernel)
    per_elem = 4 * 32 / (BN * BK)  # thread-instructions per loop instruction per element (4 warps)
    return dict(kernel=fn.__name__, tau_one=tau_one, regs=regs, spill_bytes=spills, wgmma_serialised=serialised,
                instr_per_elem=round(sass.loop_len * per_elem, 2),
                mufu_per_elem=round(sass.classes.get("MUFU", 0) * per_elem, 2),
                classes={c: round(n * per_elem, 2) for c, n in sorted(sass.classes.items())})


if __name__ == "__main__":
    for fn in (toy, toy_bwd):
        for tau_one in (0, 1):
            print(json.dumps(report(fn, tau_one)))
