"""Does delaying a dot by one loop iteration change the warp layout triton gives the dot that feeds it?

A toy of the dμ kernel's shape at D = 256 (codes × rows tile s = μ·xᵀ, an elementwise e of it with a
per-code sum, and acc += e·x), compiled for sm_90 on a CPU (triton 3.7.1, the bundled ptxas/nvdisasm).
Triton gives a dot whose result reaches another dot in the same iteration warpsPerCTA = [num_warps, 1]
(its "chained dot" rule, for FlashAttention); with DELAY the acc dot takes the previous iteration's e
through the loop's carried state, which the rule does not follow, so both dots may take [4, 2].
Run: python benchmarks/results/static-2026-12-02-chained-dot/toy.py  (output: toy.txt)"""
import os
import re
import sys

os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from gmvq_kernels import devtools  # noqa: E402


@triton.jit
def toy(mu_ptr, x_ptr, out_ptr, N, DELAY: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    offs_k = tl.program_id(0) * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
    acc = tl.zeros((BK, D), tl.float32)
    ssum = tl.zeros((BK,), tl.float32)
    e_prev = tl.zeros((BK, BN), tl.bfloat16)
    for n in range(0, N, BN):
        offs_n = n + tl.arange(0, BN)
        x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
        s = tl.dot(mu, tl.trans(x))
        e = tl.exp2(s * 0.5)
        ssum += tl.sum(e * s, axis=1)
        if DELAY:
            x_prev = tl.load(x_ptr + (offs_n - BN)[:, None] * D + offs_d[None, :], mask=(offs_n >= BN)[:, None],
                             other=0.0)
            acc = tl.dot(e_prev, x_prev, acc)
            e_prev = e.to(tl.bfloat16)
        else:
            acc = tl.dot(e.to(tl.bfloat16), x, acc)
    tl.store(out_ptr + offs_k[:, None] * D + offs_d[None, :], acc + ssum[:, None])


SIG = {"mu_ptr": "*bf16", "x_ptr": "*bf16", "out_ptr": "*fp32", "N": "i32", "DELAY": "constexpr", "BK": "constexpr",
       "BN": "constexpr", "D": "constexpr"}
for delay, BK, BN, warps in ((0, 128, 32, 8), (0, 64, 64, 8), (1, 64, 64, 8), (1, 64, 32, 8), (1, 128, 64, 8)):
    # the JIT's specialisation on a GPU: 16-byte aligned pointers, N a multiple of 16 (vector loads)
    src = ASTSource(toy, SIG, {"DELAY": delay, "BK": BK, "BN": BN, "D": 256},
                    {(i,): [["tt.divisibility", 16]] for i in range(4)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
    regs, spills, _, _ = devtools.resource_usage(k)
    layouts = sorted(set(re.findall(r"warpsPerCTA = \[\d+, \d+\], instrShape = \[\d+, \d+, \d+\]", k.asm["ttgir"])))
    sass = devtools.read_sass(k)
    per = BK * BN / (warps * 32)  # (code, row) elements per thread per iteration
    classes = ", ".join(f"{c} {v / per:.1f}" for c, v in sorted(sass.classes.items(), key=lambda kv: -kv[1]))
    print(f"DELAY={delay} codes {BK} × rows {BN}, {warps} warps: {regs} regs, {spills} B spilled, "
          f"{sass.loop_len / per:.1f} instructions per element ({classes})")
    for lay in layouts:
        print("   ", lay)
