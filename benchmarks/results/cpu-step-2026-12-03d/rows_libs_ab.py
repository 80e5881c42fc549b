"""impl="torch" fwd+bwd at (1024, 512, 32) with the C row passes of git REV against the working tree's,
interleaved in one process; the time of the library calls themselves."""
import os, subprocess, sys, time
os.environ["TRITON_INTERPRET"] = "0"
import torch
import gmvq_kernels as gk
from gmvq_kernels import cbuild, cpu_rows
rev = sys.argv[1]  # e.g. 06f3116, the commit before the bit selects
src = subprocess.run(["git", "show", f"{rev}:gmvq_kernels/cpu_rows.py"], capture_output=True, text=True, check=True).stdout
import ctypes
ns = {"ctypes": ctypes}
exec(src[src.index("_CHUNK = "):src.index("def _declare(")], ns)
old = cbuild.library("gmvq_rows_old", ns["_SOURCE"], env="X_OLD_ROWS", what="old rows", fallback="none",
                     setup=cpu_rows._declare, flags=(["-fopenmp"],))
new = cpu_rows.rows_library()
libs = {"before": old, "after": new}
torch.manual_seed(0)
N, K, D = 1024, 512, 32
x = torch.randn(N, D); means = torch.randn(K, D) * 0.3; lv = torch.full((K,), -2.3)
acc = {"fwd": 0.0, "bwd": 0.0}
ff, bb = cpu_rows.forward, cpu_rows.backward
def tf(*a, **k):
    t = time.perf_counter(); r = ff(*a, **k); acc["fwd"] += time.perf_counter() - t; return r
def tb(*a, **k):
    t = time.perf_counter(); r = bb(*a, **k); acc["bwd"] += time.perf_counter() - t; return r
cpu_rows.forward, cpu_rows.backward = tf, tb
def step(hard):
    xx = x.clone().requires_grad_(True); mm = means.clone().requires_grad_(True); ll = lv.clone().requires_grad_(True)
    out = gk.gmvq(xx, mm, ll, seed=3, impl="torch", tau=0.5, hard=hard)
    (out.quantized.square().mean() + out.latent_nll.mean() + (out.agg_posterior * out.agg_posterior.log()).sum()
     + out.entropy.mean()).backward()
    return out.quantized, xx.grad, mm.grad, ll.grad
for hard in (False, True):
    outs = {}
    for k, lib in libs.items():
        cpu_rows.rows_library = lambda lib=lib: lib
        outs[k] = step(hard)
    same = all(torch.equal(a, b) for a, b in zip(outs["before"], outs["after"]))
    res = {k: [] for k in libs}
    for i in range(60):
        for k, lib in libs.items():
            cpu_rows.rows_library = lambda lib=lib: lib
            acc["fwd"] = acc["bwd"] = 0.0
            step(hard)
            res[k].append((acc["fwd"], acc["bwd"]))
    med = lambda l: round(sorted(l)[len(l) // 2] * 1e3, 3)
    print(sys.argv[2:], "hard" if hard else "soft", "bitwise equal:", same,
          {k: {"fwd_ms": med([r[0] for r in v]), "bwd_ms": med([r[1] for r in v])} for k, v in res.items()})
