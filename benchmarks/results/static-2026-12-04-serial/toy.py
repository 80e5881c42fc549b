"""Can a row kernel's distance dot run on the tensor cores while the warpgroup does elementwise work?
A toy of the forward's loop (s = x·μᵀ, noise-like logs, an online softmax, acc += p·μ), compiled for
sm_90 on a CPU (the bundled ptxas / nvdisasm) in three schedules:

- SCHEDULE=0, as the kernels are written: s of tile t, its elementwise work, then the acc dot.
- SCHEDULE=1: s of tile t + 1 issued at the top of iteration t and carried through the loop.
- SCHEDULE=2: the acc dot of tile t − 1 first (its operand p carried), then s of tile t + 1, then the
  elementwise work of tile t, with s of tile t read before s of t + 1 is issued. This is the order in
  which triton's pipeliner leaves a dot in flight (triton/lib/Dialect/TritonGPU/Transforms/Pipeliner/
  WGMMAPipeline.cpp, ``dotCanBeProperlyAsync``: a dot whose result only the loop's yield takes, and whose
  previous result is read only after a ``wait 0`` in the loop; here the acc dot's).

Prints per schedule: registers, ptxas' wgmma serialisation code (C7514: "non wgmma instructions reading
accumulator registers of a wgmma between start and end of the pipeline stage"), and the loop's HGMMAs,
their waits (WARPGROUP.DEPBAR) and MUFU runs by position. Result (triton 3.7.1): in 0 and 1 each
distance dot's wait follows its HGMMAs within a few instructions; in 2 triton does leave it in flight
(TTGIR: ``isAsync = true`` and no wait after it), but the carried result is copied at the loop's back
edge while the wgmma is in flight (``mov.b32`` of its accumulator registers in the PTX), so ptxas
serialises every wgmma of the kernel. No schedule gives overlap within a warpgroup.
Run: python benchmarks/results/static-2026-12-04-serial/toy.py  (output: toy.txt)"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from gmvq_kernels import devtools  # noqa: E402


@triton.jit
def elementwise(s, m, ssum):
    """Stand-in for the noise's two logs and an online softmax of one tile: (p, alpha, m_new, ssum)."""
    t = s * 1.4427 - tl.log2(-tl.log2(1.0 / (2.0 + s * s)))
    m_new = tl.maximum(m, tl.max(t, axis=1))
    p = tl.exp2(t - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    return p, alpha, m_new, ssum * alpha + tl.sum(p, axis=1)


@triton.jit
def toy(x_ptr, mu_ptr, out_ptr, K, SCHEDULE: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, D: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
    acc = tl.zeros((BN, D), tl.float32)
    m = tl.full((BN,), -1e30, tl.float32)
    ssum = tl.zeros((BN,), tl.float32)
    s_cur = tl.dot(x, tl.trans(tl.load(mu_ptr + tl.arange(0, BK)[:, None] * D + offs_d[None, :])))
    p_prev = tl.zeros((BN, BK), tl.bfloat16)
    for k in range(0, K, BK):
        offs_k = k + tl.arange(0, BK)
        next_mask = (offs_k + BK < K)[:, None]
        if SCHEDULE == 0:
            mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
            p, alpha, m, ssum = elementwise(tl.dot(x, tl.trans(mu)), m, ssum)
            acc = tl.dot(p.to(tl.bfloat16), mu, acc * alpha[:, None])
        elif SCHEDULE == 1:
            mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
            mu_n = tl.load(mu_ptr + (offs_k + BK)[:, None] * D + offs_d[None, :], mask=next_mask, other=0.0)
            s_next = tl.dot(x, tl.trans(mu_n))
            p, alpha, m, ssum = elementwise(s_cur, m, ssum)
            acc = tl.dot(p.to(tl.bfloat16), mu, acc * alpha[:, None])
            s_cur = s_next
        else:
            mu_prev = tl.load(mu_ptr + (offs_k - BK)[:, None] * D + offs_d[None, :], mask=(offs_k >= BK)[:, None],
                              other=0.0)
            acc = tl.dot(p_prev, mu_prev, acc)
            s = s_cur * 1.0  # read before the next dot is issued
            mu_n = tl.load(mu_ptr + (offs_k + BK)[:, None] * D + offs_d[None, :], mask=next_mask, other=0.0)
            s_cur = tl.dot(x, tl.trans(mu_n))
            p, alpha, m, ssum = elementwise(s, m, ssum)
            acc = acc * alpha[:, None]
            p_prev = p.to(tl.bfloat16)
    if SCHEDULE == 2:
        acc = tl.dot(p_prev, tl.load(mu_ptr + (K - BK + tl.arange(0, BK))[:, None] * D + offs_d[None, :]), acc)
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], acc / ssum[:, None])


SIG = {"x_ptr": "*bf16", "mu_ptr": "*bf16", "out_ptr": "*fp32", "K": "i32", "SCHEDULE": "constexpr",
       "BN": "constexpr", "BK": "constexpr", "D": "constexpr"}
for D in (64, 128):
    for schedule in (0, 1, 2):
        BN, BK, warps = 64, 32, 4
        src = ASTSource(toy, SIG, {"SCHEDULE": schedule, "BN": BN, "BK": BK, "D": D},
                        {(i,): [["tt.divisibility", 16]] for i in range(4)})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
        regs, spills, _, serialised = devtools.resource_usage(k)
        length, trace = devtools.loop_trace(k)
        trace = [f"{i}:{what}" for i, what in trace]
        # in TTGIR's loop: is the distance dot (a 64 × BK result) followed at once by a wait?
        ir = [ln for ln in k.asm["ttgir"].splitlines() if "=" in ln]  # the ops, in order
        waited = [i + 1 < len(ir) and "warp_group_dot_wait" in ir[i + 1] for i, ln in enumerate(ir)
                  if "warp_group_dot " in ln and f"-> tensor<{BN}x{BK}xf32" in ln and "isAsync = true" in ln]
        print(f"D={D} SCHEDULE={schedule}: {regs} regs, {spills} B spilled, wgmma serialised by ptxas: "
              f"{serialised or 'no'}, loop's distance dot waited at once in TTGIR: {'yes' if all(waited) else 'no'}, "
              f"loop of {length}: " + " ".join(trace))
