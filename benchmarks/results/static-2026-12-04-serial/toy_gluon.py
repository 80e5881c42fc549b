"""The overlap Triton's tl.dot cannot express (toy.py here), written in Gluon (triton.experimental.gluon,
triton 3.7.1): the forward's toy loop with the next tile's distance dot issued as an asynchronous
warpgroup MMA and waited on at the end of the iteration (OVERLAP=1), against the same loop with each dot
waited on at once (OVERLAP=0). μ tiles come by cp.async into a ring of three shared buffers, one
iteration ahead. Compiled for sm_90 on a CPU (bundled ptxas / nvdisasm); prints registers, ptxas'
wgmma serialisation code and the loop's HGMMAs, waits and MUFU runs by position.
Run: python benchmarks/results/static-2026-12-04-serial/toy_gluon.py  (output: toy_gluon.txt)"""
import os
import re
import sys

os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma,  # noqa: E402
                                                              warpgroup_mma_wait)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from gmvq_kernels import devtools  # noqa: E402


@gluon.jit
def elementwise(s, m, ssum):
    t = s * 1.4427 - gl.log2(-gl.log2(1.0 / (2.0 + s * s)))
    m_new = gl.maximum(m, gl.max(t, axis=1))
    p = gl.exp2(t - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m - m_new)
    return p, alpha, m_new, ssum * alpha + gl.sum(p, axis=1)


@gluon.jit
def toy(x_ptr, mu_ptr, out_ptr, K, OVERLAP: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, D: gl.constexpr):
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BK, 16])
    mma_a: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    sh: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if D * 2 >= 128 else D * 2, element_bitwidth=16, rank=2)
    rows = gl.program_id(0) * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    x = gl.load(x_ptr + gl.expand_dims(rows, 1) * D + gl.expand_dims(cols, 0))
    x_s = gl.allocate_shared_memory(gl.bfloat16, [BN, D], sh, x)
    bufs = gl.allocate_shared_memory(gl.bfloat16, [3, BK, D], sh)
    codes = gl.arange(0, BK, layout=gl.SliceLayout(1, ld))
    bufs.index(0).store(gl.load(mu_ptr + gl.expand_dims(codes, 1) * D + gl.expand_dims(cols, 0)))
    fence_async_shared()
    zero_s = gl.zeros([BN, BK], gl.float32, layout=mma_s)
    s_cur = warpgroup_mma(x_s, bufs.index(0).permute((1, 0)), zero_s, use_acc=False)
    acc = gl.zeros([BN, D], gl.float32, layout=mma_a)
    m = gl.full([BN], -1e30, gl.float32, layout=gl.SliceLayout(1, mma_s))
    ssum = gl.zeros([BN], gl.float32, layout=gl.SliceLayout(1, mma_s))
    i = 0
    # the μ tile after next goes to the third buffer by cp.async one iteration ahead: at the top of the loop
    # only a wait on that copy group stands before the next distance dot
    cp.async_copy_global_to_shared(bufs.index(1), mu_ptr + gl.expand_dims(BK + codes, 1) * D + gl.expand_dims(cols, 0),
                                   mask=gl.expand_dims(BK + codes < K, 1))
    cp.commit_group()
    for k in range(0, K, BK):
        cur = bufs.index(i % 3)
        nxt = bufs.index((i + 1) % 3)
        cp.wait_group(0)
        fence_async_shared()
        offs = k + 2 * BK + codes
        cp.async_copy_global_to_shared(bufs.index((i + 2) % 3), mu_ptr + gl.expand_dims(offs, 1) * D + gl.expand_dims(cols, 0),
                                       mask=gl.expand_dims(offs < K, 1))
        cp.commit_group()
        if OVERLAP:
            tok = warpgroup_mma(x_s, nxt.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            p, alpha, m, ssum = elementwise(s_cur, m, ssum)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, mma_a)), 1)
            p_op = gl.convert_layout(p.to(gl.bfloat16), gl.DotOperandLayout(0, mma_a, 2))
            acc = warpgroup_mma(p_op, cur, acc)
            s_cur = warpgroup_mma_wait(0, deps=[tok])
        else:
            p, alpha, m, ssum = elementwise(s_cur, m, ssum)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, mma_a)), 1)
            p_op = gl.convert_layout(p.to(gl.bfloat16), gl.DotOperandLayout(0, mma_a, 2))
            acc = warpgroup_mma(p_op, cur, acc)
            s_cur = warpgroup_mma(x_s, nxt.permute((1, 0)), zero_s, use_acc=False)
        i += 1
    out = acc / gl.expand_dims(gl.convert_layout(ssum, gl.SliceLayout(1, mma_a)), 1)
    out = gl.convert_layout(out, ld)
    gl.store(out_ptr + gl.expand_dims(rows, 1) * D + gl.expand_dims(cols, 0), out)


def main_loop(text):
    labels, pending, instrs = {}, [], []
    for ln in text.splitlines():
        m = devtools._LABEL.match(ln)
        if m:
            pending.append(m.group(1)); continue
        m = devtools._INSTR.search(ln)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending: labels[lab] = addr
            pending = []
            instrs.append((addr, m.group(2), m.group(3)))
    loops = []
    for addr, op, operands in instrs:
        t = re.search(r"\((\.L_x_\d+)\)", operands) if op.startswith("BRA") else None
        if t and labels.get(t.group(1), addr) < addr:
            loops.append((labels[t.group(1)], addr))
    return max(loops, key=lambda r: r[1] - r[0]), instrs


SIG = {"x_ptr": "*bf16", "mu_ptr": "*bf16", "out_ptr": "*fp32", "K": "i32", "OVERLAP": "constexpr", "BN": "constexpr",
       "BK": "constexpr", "D": "constexpr"}
for D in (64, 128):
    for overlap in (0, 1):
        src = GluonASTSource(toy, SIG, {"OVERLAP": overlap, "BN": 64, "BK": 32, "D": D},
                             {(i,): [["tt.divisibility", 16]] for i in range(4)})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        regs, spills, _, serialised = devtools.resource_usage(k)
        (lo, hi), instrs = main_loop(devtools._run_tool("nvdisasm", "-c", data=k.asm["cubin"], suffix=".cubin"))
        trace = []
        for addr, op, operands in instrs:
            if not lo <= addr <= hi: continue
            j = (addr - lo) // 16
            if op.startswith("HGMMA"): trace.append(f"{j}:{op.split('.')[1]}")
            elif op.startswith("WARPGROUP.DEPBAR"): trace.append(f"{j}:WAIT")
            elif op.startswith("MUFU"):
                if trace and ":MUFU" in trace[-1]:
                    n = int(trace[-1].rsplit("x", 1)[1]) + 1; trace[-1] = trace[-1].rsplit("x", 1)[0] + f"x{n}"
                else: trace.append(f"{j}:MUFUx1")
        print(f"D={D} OVERLAP={overlap}: {regs} regs, {spills} B spilled, serialised: {serialised or 'no'}, "
              f"loop of {(hi - lo) // 16 + 1}: " + " ".join(trace))

