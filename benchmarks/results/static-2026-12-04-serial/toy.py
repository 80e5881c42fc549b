"""Can a row kernel's distance dot run on the tensor cores while the warpgroup does the previous tile's
elementwise work? A toy of the forward's loop (s = x·μᵀ, noise-like logs, an online softmax, acc += p·μ),
compiled for sm_90 on a CPU (the bundled ptxas / nvdisasm), as written today (AHEAD=0) and with the
distance dot issued one tile ahead and its result carried through the loop (AHEAD=1). Prints, per
variant, the loop's HGMMAs, their waits (WARPGROUP.DEPBAR) and MUFU runs by position in the loop. With
AHEAD=1 the next tile's HGMMAs move into the middle of this tile's elementwise work, but their wait
follows them within a few instructions, as it does today: triton 3.7.1 gives no overlap within a
warpgroup (its pipeliner defers the wait only for a dot whose result is the next iteration's
accumulator: the acc dot's wait is the next iteration's first).
Run: python benchmarks/results/static-2026-12-04-serial/toy.py  (output: toy.txt)"""
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
def toy(x_ptr, mu_ptr, out_ptr, K, AHEAD: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, D: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + offs_n[:, None] * D + offs_d[None, :])
    acc = tl.zeros((BN, D), tl.float32)
    m = tl.full((BN,), -1e30, tl.float32)
    ssum = tl.zeros((BN,), tl.float32)
    if AHEAD:
        mu0 = tl.load(mu_ptr + tl.arange(0, BK)[:, None] * D + offs_d[None, :])
        s_cur = tl.dot(x, tl.trans(mu0))
    for k in range(0, K, BK):
        offs_k = k + tl.arange(0, BK)
        mu = tl.load(mu_ptr + offs_k[:, None] * D + offs_d[None, :])
        if AHEAD:
            mu_n = tl.load(mu_ptr + (offs_k + BK)[:, None] * D + offs_d[None, :], mask=(offs_k + BK < K)[:, None], other=0.0)
            s_next = tl.dot(x, tl.trans(mu_n))
            s = s_cur
        else:
            s = tl.dot(x, tl.trans(mu))
        # elementwise work standing in for the noise's two logs and the softmax
        g = -tl.log2(-tl.log2(1.0 / (2.0 + s * s)))
        t = s * 1.4427 + g
        m_new = tl.maximum(m, tl.max(t, axis=1))
        p = tl.exp2(t - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        ssum = ssum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.bfloat16), mu, acc)
        m = m_new
        if AHEAD:
            s_cur = s_next
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], acc / ssum[:, None])

def devtools_loops(text):
    """(start, end) addresses of every backward branch's loop in nvdisasm's text (as devtools.read_sass)."""
    labels, pending, instrs = {}, [], []
    for ln in text.splitlines():
        m = devtools._LABEL.match(ln)
        if m:
            pending.append(m.group(1))
            continue
        m = devtools._INSTR.search(ln)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            instrs.append((addr, m.group(2), m.group(3)))
    for addr, op, operands in instrs:
        t = re.search(r"\((\.L_x_\d+)\)", operands) if op.startswith("BRA") else None
        if t and labels.get(t.group(1), addr) < addr:
            yield labels[t.group(1)], addr


SIG = {"x_ptr": "*bf16", "mu_ptr": "*bf16", "out_ptr": "*fp32", "K": "i32", "AHEAD": "constexpr", "BN": "constexpr",
       "BK": "constexpr", "D": "constexpr"}
for D in (64, 128):
    for ahead in (0, 1):
        BN, BK, warps = 64, 32, 4
        src = ASTSource(toy, SIG, {"AHEAD": ahead, "BN": BN, "BK": BK, "D": D}, {(i,): [["tt.divisibility", 16]] for i in range(4)})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
        regs, spills, _, _ = devtools.resource_usage(k)
        sass = devtools.read_sass(k)
        per = BN * BK / (warps * 32)  # elements per thread per iteration
        text = devtools._run_tool("nvdisasm", "-c", data=k.asm["cubin"], suffix=".cubin")
        body = [ln for ln in text.splitlines() if re.search(r"/\*[0-9a-f]+\*/\s+\S", ln)]
        marks = []
        start = None
        for ln in body:  # the main loop: between the target of its backward branch and the branch
            op = re.search(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)", ln)
            marks.append((int(op.group(1), 16), op.group(2), ln))
        loop = max(((lo, hi) for lo, hi in devtools_loops(text)), key=lambda r: r[1] - r[0])
        trace = []
        for addr, op, ln in marks:
            if not loop[0] <= addr <= loop[1]:
                continue
            i = (addr - loop[0]) // 16
            if op.startswith("HGMMA"):
                trace.append(f"{i}:{op.split('.')[1]}")
            elif op.startswith("WARPGROUP.DEPBAR"):
                trace.append(f"{i}:WAIT")
            elif op.startswith("MUFU"):
                if trace and trace[-1].split(":")[1].startswith("MUFU"):
                    n = int(trace[-1].rsplit("x", 1)[1]) + 1
                    trace[-1] = trace[-1].rsplit("x", 1)[0] + f"x{n}"
                else:
                    trace.append(f"{i}:MUFUx1")
        print(f"D={D} AHEAD={ahead}: {regs} regs, {spills} B spill, {sass.loop_len / per:.1f} instructions per element, "
              f"loop of {sass.loop_len}: " + " ".join(trace))
