"""fp32 inputs with dot_precision="tf32x3": does splitting the operands by hand beat Triton's own split?

A toy of a row kernel's loop (rows × codes tile s = x·μᵀ with x loaded once before the loop, an exp2,
a row sum, acc += e·μ), fp32 operands, compiled for sm_90 on a CPU (triton 3.7.1, the bundled
ptxas/nvdisasm). Modes: Triton's tf32x3; plain tf32 (the floor); x and μ split on the host (hi, lo
loaded as two tensors) with three tf32 dots each; and the split written in the kernel (x's split is
then loop-invariant, and the compiler hoists it). Run: python benchmarks/results/static-2026-12-02-tf32x3-split/toy.py
(output: toy.txt). The result, and what the same split did in the real kernels: benchmarks/README.md
("fp32's tf32x3 split by hand")."""
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
def _split(t):
    # hi truncated to tf32 (one LOP3; the real kernels' try rounded it, as cvt.rna does: one IADD more)
    hi = (t.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, t - hi


@triton.jit
def toy(x_ptr, xl_ptr, mu_ptr, mul_ptr, out_ptr, K, MODE: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
    if MODE == 2:  # x and μ as stored stand for the hi parts, xl_ptr and mul_ptr hold the lo parts
        xl = tl.load(xl_ptr + offs_n[:, None] * D + offs_d[None, :])
    acc = tl.zeros((BN, D), tl.float32)
    ssum = tl.zeros((BN,), tl.float32)
    for k in range(0, K, BK):
        offs_k = k + tl.arange(0, BK)
        mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
        if MODE == 0:
            s = tl.dot(x, tl.trans(mu), input_precision="tf32x3")
        elif MODE == 1:
            s = tl.dot(x, tl.trans(mu), input_precision="tf32")
        elif MODE == 3:
            x_hi, x_lo = _split(x)
            mu_hi, mu_lo = _split(mu)
            s = tl.dot(x_hi, tl.trans(mu_lo), input_precision="tf32")
            s = tl.dot(x_lo, tl.trans(mu_hi), s, input_precision="tf32")
            s = tl.dot(x_hi, tl.trans(mu_hi), s, input_precision="tf32")
        else:
            mul = tl.load(mul_ptr + offs_k[:, None] * D + offs_d[None, :])
            s = tl.dot(x, tl.trans(mul), input_precision="tf32")
            s = tl.dot(xl, tl.trans(mu), s, input_precision="tf32")
            s = tl.dot(x, tl.trans(mu), s, input_precision="tf32")
        e = tl.exp2(s * 0.5)
        ssum += tl.sum(e, axis=1)
        if MODE == 0:
            acc = tl.dot(e, mu, acc, input_precision="tf32x3")
        elif MODE == 1:
            acc = tl.dot(e, mu, acc, input_precision="tf32")
        elif MODE == 3:
            e_hi, e_lo = _split(e)
            acc = tl.dot(e_hi, mu_lo, acc, input_precision="tf32")
            acc = tl.dot(e_lo, mu_hi, acc, input_precision="tf32")
            acc = tl.dot(e_hi, mu_hi, acc, input_precision="tf32")
        else:
            e_hi, e_lo = _split(e)
            acc = tl.dot(e_hi, mul, acc, input_precision="tf32")
            acc = tl.dot(e_lo, mu, acc, input_precision="tf32")
            acc = tl.dot(e_hi, mu, acc, input_precision="tf32")
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], acc + ssum[:, None])

SIG = {"x_ptr": "*fp32", "xl_ptr": "*fp32", "mu_ptr": "*fp32", "mul_ptr": "*fp32", "out_ptr": "*fp32", "K": "i32",
       "MODE": "constexpr", "BK": "constexpr", "BN": "constexpr", "D": "constexpr"}
names = {0: "tf32x3 built-in", 1: "tf32", 2: "pre-split 3xtf32", 3: "in-kernel split"}
for D in (64, 128):
  for BN, BK, warps in ((64, 32, 4), (128, 32, 8)):
    for mode in (0, 1, 2, 3):
        src = ASTSource(toy, SIG, {"MODE": mode, "BK": BK, "BN": BN, "D": D}, {(i,): [["tt.divisibility", 16]] for i in range(6)})
        try:
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
        except Exception as ex:
            print(D, BN, BK, warps, names[mode], "FAILED", str(ex)[:100]); continue
        regs, spills, _, _ = devtools.resource_usage(k)
        sass = devtools.read_sass(k)
        per = BK * BN / (warps * 32)
        classes = ", ".join(f"{c} {v / per:.1f}" for c, v in sorted(sass.classes.items(), key=lambda kv: -kv[1]))
        print(f"D={D} rows {BN} x codes {BK}, {warps} warps, {names[mode]}: {regs} regs, {spills} B spilled, "
              f"{sass.loop_len / per:.1f} per element ({classes}) mma {sass.mma_shapes}")
