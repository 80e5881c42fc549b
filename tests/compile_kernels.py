"""Compile every kernel variant the launchers issue for real GPU targets, without a GPU.

Run as a script (NOT under TRITON_INTERPRET): it patches each kernel with a recorder, calls the launchers
on small CPU tensors for a grid of options (dtype, dot precision, hard, explicit noise, which upstream
gradients arrive, D bucket), and compiles each distinct (kernel, signature, constexprs, warps, stages)
with ``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` to PTX and cubin. This catches what the
interpreter lets through: the 16-wide dot minimum, type errors in untaken constexpr branches, register
and shared-memory overflows. Usage: python tests/compile_kernels.py [80 90 ...]
"""
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "compile check needs compiled (non-interpreted) kernels"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from gmvq_kernels import backward, forward, noise  # noqa: E402

ALL, ALBO, Z_ONLY = (1, 1, 1, 1, 1, 1), (1, 0, 1, 1, 0, 0), (1, 0, 0, 0, 0, 0)
# (dtype, fp32 dot precision, hard, explicit noise, D, upstream-gradient sets): every dtype, precision,
# constexpr branch and D bucket (≤64, ≤128, ≤256, ≤512) compiled at least once; the full product would
# be hundreds of variants at seconds each. Gradient sets: (Ḡ_z, Ḡ_lse, Ḡ_q̄, Ḡ_lat, Ḡ_s, Ḡ_H) kept.
VARIANTS = [
    (torch.float32, "tf32x3", True, False, 64, [ALL, ALBO]),
    (torch.float32, "ieee", True, True, 256, [ALL]),
    (torch.float32, "tf32x3", False, False, 512, [ALL]),
    (torch.float32, "tf32", False, False, 128, [Z_ONLY]),
    (torch.bfloat16, "ieee", True, False, 64, [ALL, ALBO]),
    (torch.bfloat16, "ieee", False, True, 512, [ALBO]),
    (torch.float16, "ieee", False, False, 32, [ALL]),
]
# largest shared memory one block may use (bytes): A100 163 KiB, H100/H200 227 KiB
SHARED_LIMIT = {80: 166912, 90: 232448}
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64"}


class Recorder:
    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.fn, args, kwargs))
        return launch


def signature(fn, args, kwargs):
    sig, constexprs = {}, {}
    names = fn.arg_names
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + TYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}.{name}: {type(value)}")
    options = {}
    for name, value in kwargs.items():
        if name in ("num_warps", "num_stages"):
            options[name] = value
        else:
            sig[name] = "constexpr"
            constexprs[name] = value
    ordered = {n: sig[n] for n in names}  # signature in argument order
    return ordered, constexprs, options


def record_launches():
    log = []
    patched = {}
    for mod in (forward, backward, noise):
        for attr in dir(mod):
            obj = getattr(mod, attr)
            if isinstance(obj, triton.runtime.JITFunction) and attr.startswith("_") and attr.endswith("_kernel"):
                patched[(mod, attr)] = obj
                setattr(mod, attr, Recorder(obj, log))
    try:
        for dtype, prec, hard, explicit, D, grad_sets in VARIANTS:
            N, K = 64, 256
            x, means = torch.randn(N, D).to(dtype), torch.randn(K, D).to(dtype)
            a, b, v = torch.rand(K), torch.randn(K), torch.rand(K)
            g = torch.randn(N, K) if explicit else None
            forward.gmvq_fwd(x, means, a, b, v, tau=0.5, hard=hard, seed=1, noise=g, dot_precision=prec)
            stats, ent = torch.zeros(4, N), torch.zeros(N)
            hard_idx = torch.zeros(N, dtype=torch.int64) if hard else None
            all_grads = (torch.randn(N, D).to(dtype), torch.randn(N), torch.randn(K), torch.randn(N),
                         torch.randn(N), torch.randn(N))
            for keep in grad_sets:
                grads = tuple(t if k else None for t, k in zip(all_grads, keep))
                backward.gmvq_bwd(x, means, a, b, v, g, (ent, stats, hard_idx), grads, tau=0.5, hard=hard,
                                  seed=1, dot_precision=prec)
    finally:
        for (mod, attr), obj in patched.items():
            setattr(mod, attr, obj)
    # the noise kernel is launched only on CUDA / interpreter: record one launch by hand
    log.append((noise._gumbel_noise_kernel, (torch.empty(4, 4), 4, 4, 1, 2, 0), dict(BLOCK_N=32, BLOCK_K=128)))
    return log


def main(capabilities):
    log = record_launches()
    seen, failures = set(), []
    for fn, args, kwargs in log:
        sig, constexprs, options = signature(fn, args, kwargs)
        key = (fn.__name__, tuple(sig.items()), tuple(sorted(constexprs.items())), tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        for cc in capabilities:
            src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs)
            try:
                kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
                assert kernel.asm.get("cubin"), "no cubin produced"
                shared = kernel.metadata.shared
                assert shared <= SHARED_LIMIT.get(cc, 232448), f"needs {shared} B of shared memory"
            except Exception as e:  # report every failing variant, not just the first
                failures.append(f"sm_{cc} {fn.__name__} {constexprs} {options}: {type(e).__name__}: {e}"[:2000])
    print(f"compiled {len(seen)} kernel variants for sm_{', sm_'.join(map(str, capabilities))}; "
          f"{len(failures)} failed")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main([int(c) for c in sys.argv[1:]] or [80, 90]))
