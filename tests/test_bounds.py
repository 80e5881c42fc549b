"""Every load, store and atomic the kernels issue lies inside one of the launch's tensor arguments, and
its mask is bool data (interpreter only: it hands the kernels real host addresses, which this file
checks before each memory op). On a GPU an access past a tensor reads garbage, writes over a neighbour
or faults (on 2026-12-04 an H200 faulted in an opt-in fused backward at D = 100, since removed, where
the interpreter had found no such access: benchmarks/README.md, "GPU results ... 2026-12-04"), so these
cases run at the tiles and row splits an H200 runs."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import gmvq_kernels as gk
from gmvq_kernels import config
from utils import make_inputs

pytestmark = pytest.mark.skipif(not config.INTERPRET, reason="checks the interpreter's memory ops")


class BoundsCheck:
    """Within the block, each interpreted launch's tensor arguments are its allowed ranges, and every
    masked-in address of a load, store or atomic must lie inside one of them (AssertionError otherwise,
    naming the kernel, the op and the first offsets). ``checked`` counts the memory ops seen."""

    def __enter__(self):
        from triton.runtime import interpreter

        self.interpreter, self.builder = interpreter, interpreter.interpreter_builder
        self.ranges, self.kernel, self.checked = [], None, 0
        self.saved = [(interpreter.GridExecutor, "_init_args_hst", interpreter.GridExecutor._init_args_hst)]
        self.saved += [(self.builder, name, getattr(self.builder, name))
                       for name in ("create_masked_load", "create_masked_store", "create_atomic_rmw")]
        check, init = self.check, interpreter.GridExecutor._init_args_hst

        def init_args(executor, args_dev, kwargs):
            args, kw = init(executor, args_dev, kwargs)
            self.kernel, self.ranges = executor.fn.__name__, []
            for t in [*args, *kw.values()]:
                if isinstance(t, torch.Tensor) and t.numel():
                    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
                    self.ranges.append((t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()))
            return args, kw

        load, store, rmw = (getattr(self.builder, name) for _, name, _ in self.saved[1:])
        interpreter.GridExecutor._init_args_hst = init_args
        self.builder.create_masked_load = lambda ptrs, mask, *a: (check(ptrs, mask, "load"), load(ptrs, mask, *a))[1]
        self.builder.create_masked_store = lambda ptrs, value, mask, *a: (check(ptrs, mask, "store"),
                                                                         store(ptrs, value, mask, *a))[1]
        self.builder.create_atomic_rmw = lambda op, ptr, val, mask, *a: (check(ptr, mask, "atomic"),
                                                                        rmw(op, ptr, val, mask, *a))[1]
        return self

    def check(self, ptrs, mask, op):
        self.checked += 1
        # a mask formed with a broadcast scalar compare carries int32 data in the interpreter (3.6–3.9),
        # which triton 3.9's masked loads and stores refuse (tiles.in_first_split)
        if mask.data.dtype != np.bool_:
            raise AssertionError(f"{self.kernel}: a {op} mask of {mask.data.dtype} data, not bool")
        size = np.dtype(self.interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        addr = ptrs.data.astype(np.uint64)[np.broadcast_to(mask.data, ptrs.data.shape)]
        inside = np.zeros(addr.shape, bool)
        for lo, hi in self.ranges:
            inside |= (addr >= lo) & (addr + size <= hi)
        if not inside.all():
            bad = [int(a) for a in addr[~inside][:4]]
            # each as (bytes from the start of the argument below it, that argument's size)
            where = [max(((a - lo, hi - lo) for lo, hi in self.ranges if lo <= a), default=None, key=lambda r: -r[0])
                     for a in bad]
            raise AssertionError(f"{self.kernel}: {int((~inside).sum())} {op}s outside every tensor argument, "
                                 f"e.g. (offset, size of the argument below) {where}")

    def __exit__(self, *exc):
        for obj, name, value in self.saved:
            setattr(obj, name, value)


@triton.jit
def _overreach_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=offs < n), mask=offs < BLOCK)


def test_bounds_check_catches_an_overreach():
    """The check fails a kernel whose store runs past its tensor (and passes the same launch in range)."""
    src, dst = torch.arange(16.0), torch.zeros(32)
    with BoundsCheck():
        _overreach_kernel[(1,)](src, dst, 16, BLOCK=32)  # loads masked to 16, stores 32 into 32: in range
        # the interpreter re-raises the check's AssertionError as its InterpreterError
        with pytest.raises(Exception, match=r"_overreach_kernel: 16 stores outside every tensor argument, e\.g\. "
                                            r"\(offset, size of the argument below\) \[\(64, 64\)"):
            _overreach_kernel[(1,)](src, dst[:16], 16, BLOCK=32)


def h200_tiles():
    """config.override of the tables' configs at D ≤ 128 for half inputs, as sm_90 takes them where
    TUNED has no entry: the interpreter otherwise runs every kernel at 16 × 16."""
    kinds = ("row", "col", "colsum", "delta", "encode")
    return config.override(**{kind: config.table_config(kind, 100, torch.bfloat16) for kind in kinds})


def step(N, K, D, dtype, hard, **kw):
    """One fwd+bwd of every output (codes aside) and the encode path; the number of memory ops checked."""
    x, m, lv, lp = make_inputs(N, K, D, dtype=dtype, prior=True, seed=N + K + D, requires_grad=True)
    with BoundsCheck() as bounds:
        out = gk.gmvq(x, m, lv, lp, impl="triton", hard=hard, seed=3, **kw)
        loss = sum(getattr(out, f).float().sum() for f in
                   ("quantized", "log_likelihood", "latent_nll", "mixture_var", "entropy"))
        (loss + (out.agg_posterior * torch.arange(K)).sum()).backward()
        gk.gmvq_encode(x.detach(), m.detach(), lv.detach(), lp.detach(), impl="triton")
    return bounds.checked


@pytest.mark.parametrize("hard", [False, True])
def test_half_inputs_below_their_tile_stay_in_bounds(monkeypatch, hard):
    """bf16 at D = 100 (a 128-wide tile) with the tiles and row splits an H200 runs (132 SMs): N, K
    tails in every kernel."""
    monkeypatch.setattr(config, "sm_count", lambda dev: 132)
    with h200_tiles():
        assert step(70, 300, 100, torch.bfloat16, hard) > 100


def test_fp32_split_codebook_stays_in_bounds(monkeypatch):
    """fp32 tf32x3 at D = 20 with the codebook and the rows split (8 SMs, no minimum split size)."""
    monkeypatch.setattr(config, "sm_count", lambda dev: 8)
    monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
    assert step(40, 70, 20, torch.float32, True, dot_precision="tf32x3") > 100
