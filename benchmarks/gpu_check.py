"""GPU correctness check + benchmarks in one command (issue: one script, < 8 minutes, one folder).

0. The GPU's Gumbel noise against the exact transform in float64, and a KS fit of 2²² draws.
1. Correctness against the float64 reference on the GPU: fp32 with each dot precision, bf16, soft and
   hard (dμ's one-hot after its loop and, at K = 500, in it), with a prior, latents far from the
   origin with and without the norm dot (GMVQ_NORM_DOT=0); every output and every
   gradient (max error relative to max|gt|, beside the
   error of the reference at the input precision). Large shapes (N=65536, K=262144, D=256 and
   N·K > 2³²) are checked on row windows, which is exact: every row output and dx depend only on
   their own row (q̄'s upstream gradient is rescaled for the window). A codebook of 2³¹ elements or
   more (K = 2²³ + 4096, D = 256: the row kernels' 64-bit code offsets, tiles.wide_codes) against the
   float64 reference on the rows' own codes, each row one code's mean plus a little noise (wide_check).
2. Bitwise determinism of repeated calls; torch.compile(fullgraph=True) of the op against eager (default
   mode, and mode="reduce-overhead", whose CUDA graphs must leave the noise-drawing ops out); the
   host time of one fwd+bwd at a tiny shape and where it goes (host_check: beside the forward alone,
   the backward alone, SDPA and an empty launch; device syncs; torch.profiler's CPU table and a
   cProfile into host_profile.txt), and each kernel's launch alone through the Triton JIT beside its
   argument binding timed on the host (launch_check); the kernels' own time at
   (8192, 1024, 64) from a CUDA-graph replay (graph_check), and a module training step captured with
   its step counter on the device (module_graph_check); split-K timed on, off and as the
   launchers choose at N ≤ 8192 (split_check); the D = 512 tiles against those before 2026-12-02
   (d512_check); row 4's fwd+bwd with the row kernels' and dμ's registers capped (cap_check,
   REGISTER_CAPS); q̄'s pass at rows 2 and 4 on a tile of two CTAs per SM (colsum_check); the device
   time per kernel at the anchor rows, soft and hard
   (kernel_times_check, torch.profiler), to set beside static_cost.py's model per kernel
   (``static_cost.py --calibrate`` refits its fit_ms to them); the Gluon
   probe of a distance dot kept in flight over the elementwise work, in its three schedules
   (overlap_check, benchmarks/overlap_probe.py: benchmarks/README.md, lever 14); with --ncu (or
   --ncu-only: that alone), Nsight Compute on each kernel at rows 2 and 3: speed of light, occupancy,
   issue slots, the pipes' shares and the stall reasons per issued instruction (ncu_check).
3. benchmarks/speed.py: the four anchor shapes (speed.ANCHOR_SHAPES; bf16 fwd+bwd, with GMVQ_SERIAL_WGMMA=1: the
   loops before docs/speed_history.md, item 20, and with
   GMVQ_NORM_DOT=0: the distances before item 23; at D = 128 with GMVQ_DEFER_DQ_128=1 too: item 36,
   no Δ pass), the K and N sweeps, matmul ceilings; JSON, CSV, PNG.
4. --tune: every bucket's table default and config.CANDIDATES timed (gmvq_kernels/autotune.py) at one
   shape per D bucket, bf16 and fp32 (training: row and column kernels; tokenizer: encode); the winners
   are written into gmvq_kernels/config.py's TUNED block (dated, with the device), and a copy of the
   rewritten config.py and tune.json go to --out: on a lent machine only --out comes back, so copy
   that config.py into the repository.

    python benchmarks/gpu_check.py --out benchmarks/results/<device>-<date>
Everything goes to --out; the run stops optional parts at --budget-s. A step that leaves the CUDA
context unusable (an illegal memory access: every later call would fail too) is logged, and the script
runs again in a fresh process from the next step (--resume-at, appending to the same log).

Side by side (--jobs, default min(8, cores / 2) on a GPU): the steps that time nothing (1 and the
untimed checks of 2) run first, each in a process of its own, several at a time, with warm steps
(warm_check) that make the first call of what the timed steps and speed.py will compile (each anchor
row's Triton variants, the compiled baselines, the sweeps, split-K and D = 512): Triton's kernels and
inductor's graphs are then in their on-disk caches, and the timed steps, run after them one by one in
this process, load instead of compiling. On the device's clock that moves most of the compiling, which
took much of the 2026-12-04 run's checks, onto the host's other cores. A child's fault ends its step
alone; a child past --step-timeout-s is killed; both are logged as errors with the child's output.
Where a second process cannot use the GPU (an exclusive compute mode), the steps run one at a time.
The seconds the untimed checks log (window_check, wide_check) are then times on a shared device.
"""
import argparse
import functools
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import astuple, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402  (sets TRITON_INTERPRET on a CPU before triton loads)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import gmvq_kernels as gk  # noqa: E402
from gmvq_kernels import config, testing, tiles  # noqa: E402
from gmvq_kernels.spec import DIFF_OUTPUTS  # noqa: E402

FIELDS = gk.GMVQOutput._fields
GRADS = ("dx", "dmeans", "dlog_var", "dlog_prior")


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def sync(device):
    """Wait for the device's queued work (CUDA launches are asynchronous); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_backward(x, m, lv, lp, impl, up, **kw):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, m, lv, lp)]
    out = gk.gmvq(*leaves, impl=impl, **kw)
    loss = sum((getattr(out, name).double() * u).sum() for name, u in up.items() if u is not None)
    loss.backward()
    return out, [None if t is None else t.grad for t in leaves]


def upstream(N, K, D, device, gen):
    """One random float64 upstream gradient per output that carries one, by name."""
    shapes = dict(quantized=(N, D), agg_posterior=(K,))
    return {name: torch.randn(*shapes.get(name, (N,)), generator=gen, device=device, dtype=torch.float64)
            for name in DIFF_OUTPUTS}


def full_check(N, K, D, dtype, prec, hard, device, log, offset=0.0, norm_dot=True, tau=0.5, near_codes=0.0):
    """Every output and gradient against float64 (the CPU tests' rule) at temperature ``tau``. offset:
    latents and means that many spreads from the origin, where half-precision dots must cancel the
    offset exactly (the CPU interpreter runs them on fp32 operands; the kernels round their tiles by
    name so it sees most). norm_dot False: bf16 with GMVQ_NORM_DOT=0, the norms added per element
    (docs/speed_history.md, item 23: the tensor cores' own summation of the norm dot is what the
    interpreter cannot show). near_codes: a trained quantizer's inputs (testing.make_inputs), where
    passes whose distances differ in their last bits no longer agree on the peaked probabilities
    (README, "Correctness": fp32 in the interpreter)."""
    with config.env_flag(config.NORM_DOT_ENV, norm_dot):
        return _full_check(N, K, D, dtype, prec, hard, device, log, offset, norm_dot, tau, near_codes)


def _full_check(N, K, D, dtype, prec, hard, device, log, offset, norm_dot, tau, near_codes):
    gen = torch.Generator(device=device).manual_seed(N + K + D)
    x, m, lv, lp = testing.make_inputs(N, K, D, dtype=dtype, prior=True, device=device, seed=N + K + D,
                                       offset=offset, near_codes=near_codes)
    noise = gk.gumbel_noise(N, K, seed=5, device=device)
    up = upstream(N, K, D, device, gen)
    kw = dict(tau=tau, hard=hard, noise=noise)
    gt, ggt = forward_backward(x.double(), m.double(), lv.double(), lp.double(), "reference", up, **kw)
    ref, gref = forward_backward(x, m, lv, lp, "reference", up, **kw)
    out, gout = forward_backward(x, m, lv, lp, "triton", up, dot_precision=prec, **dict(kw, noise=None, seed=5))
    row = dict(check="full", N=N, K=K, D=D, dtype=str(dtype).replace("torch.", ""), dot_precision=prec, hard=hard,
               offset=offset, norm_dot=config.norm_dot(dtype), tau=tau, near_codes=near_codes)
    # the CPU tests' pass rule (gmvq_kernels.testing.three_way); tf32 dots round operands to 10 mantissa
    # bits, so they get 1e-2 against the fp64 definition instead. Half inputs must also stay within
    # HALF_ABS_REL of max|gt| outright.
    half = dtype in (torch.bfloat16, torch.float16)
    tol = 1e-2 if prec == "tf32" else testing.REL_TOL[dtype]
    ok = True
    for name, o, r, g in list(zip(FIELDS, out, ref, gt)) + list(zip(GRADS, gout, gref, ggt)):
        if name == "codes":
            row["codes_mismatch"] = int((o != g).sum())
            # the tokenizer kernel (codes only) against the same float64 codes
            enc = gk.gmvq_encode(x, m, lv, lp, impl="triton", dot_precision=prec)
            row["encode_mismatch"] = int((enc != g.to(enc.device)).sum())
        else:
            row[name] = (rel_err(o, g), rel_err(r, g))
            ok &= testing.three_way(o, [r], g, tol)[0] and (not half or testing.three_way(o, [g], g,
                                                                                          testing.HALF_ABS_REL)[0])
    row["ok"] = bool(ok)
    log(row)
    return row


def window_check(N, K, D, dtype, rows, device, log):
    """Row-window check at shapes where a float64 N×K reference does not fit."""
    gen = torch.Generator(device=device).manual_seed(7)
    x = torch.randn(N, D, generator=gen, device=device).to(dtype)
    m = torch.randn(K, D, generator=gen, device=device).to(dtype)
    lv = torch.zeros(K, device=device)
    up_rows = torch.randn(N, D, generator=gen, device=device, dtype=torch.float64)
    up_q = torch.randn(K, generator=gen, device=device, dtype=torch.float64)
    up_lse = torch.randn(N, generator=gen, device=device, dtype=torch.float64)
    t0 = time.time()
    out, gout = forward_backward(x, m, lv, None, "triton",
                                 dict(quantized=up_rows, log_likelihood=up_lse, agg_posterior=up_q), seed=11, tau=1.0)
    sync(device)
    row = dict(check="window", N=N, K=K, D=D, dtype=str(dtype).replace("torch.", ""), seconds=time.time() - t0)
    enc = gk.gmvq_encode(x, m, lv, impl="triton")
    for lo in rows:
        hi = min(lo + 64, N)
        n = hi - lo
        noise = gk.gumbel_noise(n, K, seed=11, device=device, row_offset=lo)
        # the window's q̄ is a mean over n rows instead of N: rescale its upstream gradient
        up = dict(quantized=up_rows[lo:hi], log_likelihood=up_lse[lo:hi], agg_posterior=up_q * (n / N))
        gt, ggt = forward_backward(x[lo:hi].double(), m.double(), lv.double(), None, "reference", up,
                                   noise=noise.double(), tau=1.0)
        for name, i in (("quantized", 0), ("log_likelihood", 2), ("latent_nll", 4), ("mixture_var", 5),
                        ("entropy", 6)):
            row[f"{name}@{lo}"] = rel_err(out[i][lo:hi], gt[i])
        row[f"codes_mismatch@{lo}"] = int((out.codes[lo:hi] != gt.codes).sum())
        row[f"encode_mismatch@{lo}"] = int((enc[lo:hi] != gt.codes).sum())
        row[f"dx@{lo}"] = rel_err(gout[0][lo:hi], ggt[0])
    log(row)
    del x, m, out, gout
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def wide_check(device, log, N=64, K=2**23 + 4096, D=256):
    """A codebook of 2³¹ elements or more (K·D ≥ 2³¹: the row kernels' 64-bit code offsets,
    tiles.wide_codes), which no GPU had run before 2026-12-05 (the 32-bit offsets wrapped there). Each
    row is a code's mean plus a little noise, the codes spread over the codebook and across the 2³¹
    element boundary, so that each row's probabilities sit on its code (random means lie ~D apart in
    ℓ): every output and gradient is then that of the codebook cut down to the rows' codes, against
    which the float64 reference is checked by the CPU tests' rule; the codes of the forward and of
    gmvq_encode must be the rows' own. Off a GPU (``--dry``) the wide variant is forced at a small K."""
    gen = torch.Generator(device=device).manual_seed(5)
    m = torch.randn(K, D, generator=gen, device=device).to(torch.bfloat16)
    edge = min(2**31 // D, K - 2)  # the first code past 2³¹ elements (K - 2 at a --dry shape)
    target = torch.cat([torch.randint(0, K, (N - 4,), generator=gen, device=device),
                        torch.tensor([edge - 1, edge, K - 2, K - 1], device=device)])
    x = (m[target].float() + 0.1 * torch.randn(N, D, generator=gen, device=device)).to(torch.bfloat16)
    lv, lp = torch.zeros(K, device=device), torch.full((K,), -math.log(K), device=device)
    up = upstream(N, K, D, device, gen)
    up.pop("agg_posterior")
    row = dict(check="wide", N=N, K=K, D=D, wide=tiles.wide_codes(dict(K=K, D=D)))
    t0 = time.time()
    out, gout = forward_backward(x, m, lv, lp, "triton", up, seed=3, tau=1.0)
    sync(device)
    row["seconds"] = round(time.time() - t0, 2)
    row["codes_mismatch"] = int((out.codes != target).sum())
    row["encode_mismatch"] = int((gk.gmvq_encode(x, m, lv, lp, impl="triton") != target).sum())
    sub, at = torch.unique(target, return_inverse=True)  # the rows' codes, and each row's among them
    kw = dict(seed=3, tau=1.0, noise=torch.zeros(N, len(sub), device=device))  # one-hot q: the noise is moot
    gt, ggt = forward_backward(x.double(), m[sub].double(), lv[sub].double(), lp[sub].double(), "reference", up, **kw)
    ref, gref = forward_backward(x, m[sub], lv[sub], lp[sub], "reference", up, **kw)
    ok = row["codes_mismatch"] == 0 and row["encode_mismatch"] == 0 and bool((gt.codes == at).all())
    # log π is normalised over the codes given: the cut-down codebook's log-likelihood is log(K / its size) more
    shift = dict(log_likelihood=math.log(len(sub) / K))
    pairs = [(name, getattr(out, name), getattr(ref, name) + shift.get(name, 0.0),
              getattr(gt, name) + shift.get(name, 0.0)) for name in ("quantized", "log_likelihood", "latent_nll",
                                                                      "mixture_var")]
    pairs += [("dx", gout[0], gref[0], ggt[0]), ("dmeans@codes", gout[1][sub], gref[1], ggt[1])]
    for name, o, r, g in pairs:
        row[name] = (rel_err(o, g), rel_err(r, g))
        ok &= testing.three_way(o, [r], g, testing.REL_TOL[torch.bfloat16])[0]
    row["ok"] = bool(ok)
    log(row)
    del m, out, gout
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def forced_wide(fn):
    """fn() with the row kernels' wide variant forced at any size (tiles.WIDE_CODES_MIN 0): --dry's wide_check."""
    saved, tiles.WIDE_CODES_MIN = tiles.WIDE_CODES_MIN, 0
    try:
        return fn()
    finally:
        tiles.WIDE_CODES_MIN = saved


def determinism_check(device, log, shape=(4096, 8192, 64)):
    x, m, lv, _ = testing.make_inputs(*shape, dtype=torch.bfloat16, device=device, log_var_scale=0.0,
                                      requires_grad=True)
    runs = []
    for _ in range(2):
        for t in (x, m, lv):
            t.grad = None
        out = gk.gmvq(x, m, lv, impl="triton", hard=True, seed=3)
        speed.objective(out).backward()
        runs.append([t.clone() for t in out] + [x.grad.clone(), m.grad.clone(), lv.grad.clone()])
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    finite = all(torch.isfinite(t.float()).all().item() for t in runs[0] if t.is_floating_point())
    log(dict(check="deterministic", bitwise_equal=same, all_finite=finite))
    return same


def compile_check(device, log, shape=(4096, 8192, 64), mode=None):
    """torch.compile(fullgraph=True, inductor) of gmvq with backward against eager, over three
    temperatures and seeds (four with ``mode``); counts compilations (the op takes tau and seed as graph
    inputs). mode="reduce-overhead": inductor's CUDA graphs, which must leave the noise-drawing ops out
    (config.CUDAGRAPH_UNSAFE): a captured op would replay its first seed and tau, which the comparison
    with eager at the third and fourth steps (replays) would show; also logs inductor's counts of CUDA
    graph partitions and skips."""
    import torch._dynamo.testing
    from torch._dynamo.utils import counters

    x, m, lv, _ = testing.make_inputs(*shape, dtype=torch.bfloat16, device=device, log_var_scale=0.0,
                                      requires_grad=True)

    def fwd(x, m, lv, tau, seed):
        out = gk.gmvq(x, m, lv, impl="triton", hard=True, tau=tau, seed=seed)
        return out.quantized, out.agg_posterior, speed.objective(out)

    def step(fn, tau, seed):
        z, agg, loss = fn(x, m, lv, tau, seed)
        return [z, agg, *torch.autograd.grad(loss, (x, m, lv))]

    torch._dynamo.reset()
    counters.clear()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    if mode is None:
        compiled = torch.compile(fwd, fullgraph=True, backend=counter)
    else:  # a backend object takes no mode: count the frames dynamo compiles instead
        compiled = torch.compile(fwd, fullgraph=True, mode=mode)
    errs = []
    steps = ((1.0, 1), (0.7, 2), (0.5, 3)) + (((0.5, 4),) if mode else ())
    for tau, seed in steps:
        errs.append(max(rel_err(a, b) for a, b in zip(step(compiled, tau, seed), step(fwd, tau, seed))))
    log(dict(check="torch_compile", mode=mode or "default", N=shape[0], K=shape[1], D=shape[2], dtype="bf16",
             max_rel_err=max(errs), rel_err_per_step=errs,
             compilations=counter.frame_count if mode is None else counters["stats"]["unique_graphs"],
             cudagraph_partitions=counters["inductor"]["cudagraph_partitions"],
             cudagraph_skips=counters["inductor"]["cudagraph_skips"]))


SPLIT_SHAPES = ((8192, 1024, 64), (8192, 16384, 64), (4096, 16384, 128), (8192, 65536, 64), (8192, 262144, 32))


def split_check(device, log, shapes=SPLIT_SHAPES, warm=False):
    """Split-K A/B (config.SPLIT_MIN_CODES is set from such timings): bf16 fwd+bwd of speed.py's
    objective with the codebook split as the launchers choose, never split, and always split, side by
    side per shape. ``warm``: each once, untimed and unlogged (a warm step)."""
    default = config.SPLIT_MIN_CODES
    for N, K, D in shapes:
        row = dict(check="split_k", N=N, K=K, D=D, split_min_codes=default)
        cfg = config.row_config(D, torch.bfloat16, device)
        row["splits_when_split"] = config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, device, min_codes=0)[0]
        row["splits_default"] = config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, device)[0]
        try:
            for name, codes in (("ms_default", default), ("ms_never", 2**62), ("ms_always", 0)):
                config.SPLIT_MIN_CODES = codes
                row[name] = speed.measure("triton", "fwd_bwd", "bf16", N, K, D, device, quick=True,
                                          warm=warm).get("ms")
        finally:
            config.SPLIT_MIN_CODES = default
        if not warm:
            log(row)


# the D = 512 bucket's tiles before 2026-12-02 (config.py, above ROW_CONFIGS): 64-row tiles that spilled
# 5.7–17 KB per thread on sm_90
D512_BEFORE = dict(row=config.KC(64, 16, 4, 1), col=config.KC(32, 64, 4, 1), delta=config.KC(64, 16, 4, 1))


def d512_check(device, log, shapes=((8192, 4096, 512), (32768, 8192, 512)), time_fn=None):
    """The D = 512 bucket's tiles against those before 2026-12-02: the training kernels' fwd + bwd
    (autotune.training_step, bf16, soft and hard), side by side per shape (the static model put them
    about even; it does not price the old tiles' spills, which must go to L2). ``time_fn``: the timer
    (autotune.cuda_ms by default)."""
    from gmvq_kernels import autotune

    time_fn = time_fn or autotune.cuda_ms
    for N, K, D in shapes:
        x, means, a, b, v = kernel_inputs(N, K, D, torch.bfloat16, device)
        for hard in (False, True):
            step = autotune.training_step(x, means, a, b, v, tau=0.5, hard=hard,
                                          dot_precision=config.DEFAULT_DOT_PRECISION)
            row = dict(check="d512_tiles", N=N, K=K, D=D, hard=hard, ms_now=time_fn(step))
            with config.override(**D512_BEFORE):
                row["ms_before"] = time_fn(step)
            log(row)


# register caps for cap_check (config.KernelConfig.maxnreg), from the static report at (8192, 262144, 32)
# bf16 (2026-12-05, triton 3.7.1): the row kernels' (64, 32, 4, 2) under 168 registers holds 12 warps per SM
# (dx 8 before; the forward holds 12 already), spilling 8 / 72 B in dx soft / hard (+1.8 / +1.9
# instructions per element); dμ's (32, 128, 8, 2) under 128 holds 16 (8 before), spilling 288 / 240 B
# (+6.9 / +6.5); the forward alone under 128 holds 16, spilling 0 / 32 B (+0.2 / +2.5), where dx would
# spill 440 B (the row config is both kernels'). The count cannot say whether the occupancy pays for that:
# the loops are latency-bound at 8 warps per SM (benchmarks/README.md, "Latency from ptxas's control codes").
REGISTER_CAPS = dict(row=168, col=128)
FORWARD_CAP = 128
# dμ on two CTAs of 4 warps per SM instead of one of 8: the same 8 warps per SM, spill-free, 54.9 / 53.4
# instructions per element against 55.9 / 54.0 at row 4 (63.0 / 61.5 against 61.7 / 60.0 at row 2), but
# the warps a scheduler holds then come from two CTAs whose loop barriers do not hold them in step
COL_TWO_CTAS = config.KC(32, 64, 4, 2)


def cap_check(device, log, shapes=((8192, 262144, 32),), time_fn=None):
    """The training kernels' fwd + bwd (autotune.training_step, bf16, τ = 1, soft and hard) with the
    launchers' configs, with the row and column kernels' registers capped (REGISTER_CAPS: one, the
    other, both) and with dμ on COL_TWO_CTAS; and the forward alone (with the sums a backward needs) as
    configured and under FORWARD_CAP: side by side per shape, whether more resident warps, or warps out
    of step, pay for the spills and instructions. ``time_fn``: the timer (autotune.cuda_ms by default)."""
    from gmvq_kernels import autotune
    from gmvq_kernels.forward import gmvq_fwd

    time_fn = time_fn or autotune.cuda_ms
    prec = config.DEFAULT_DOT_PRECISION
    for N, K, D in shapes:
        x, means, a, b, v = kernel_inputs(N, K, D, torch.bfloat16, device)

        def capped(kind, cap):
            return replace(getattr(config, f"{kind}_config")(D, x.dtype, device), maxnreg=cap)

        for hard in (False, True):
            step = autotune.training_step(x, means, a, b, v, tau=1.0, hard=hard, dot_precision=prec)
            row = dict(check="register_caps", N=N, K=K, D=D, hard=hard, caps=REGISTER_CAPS, forward_cap=FORWARD_CAP,
                       ms_default=time_fn(step))
            for name, kinds in (("ms_row_cap", ("row",)), ("ms_col_cap", ("col",)), ("ms_both", ("row", "col"))):
                with config.override(**{kind: capped(kind, REGISTER_CAPS[kind]) for kind in kinds}):
                    row[name] = time_fn(step)
            with config.override(col=COL_TWO_CTAS):
                row["ms_col_two_ctas"] = time_fn(step)

            def forward():
                gmvq_fwd(x, means, a, b, v, tau=1.0, hard=hard, seed=0, noise=None, dot_precision=prec)
            row["fwd_ms_default"] = time_fn(forward)
            with config.override(row=capped("row", FORWARD_CAP)):
                row["fwd_ms_capped"] = time_fn(forward)
            log(row)


# q̄'s pass (the column sums of q) with a tile of two CTAs per SM, for colsum_check: at D ≤ 128 the table's
# and TUNED's (64, 512, 8, 2) holds one (205–215 registers: 8 warps per SM), (64, 256, 8, 1) two (112–127:
# 16), for 9.5 / 8.5 instructions per element against 9.0 / 8.3 at rows 2 / 4 (static report, triton
# 3.7.1, 2026-12-05). Its loop waits on its dot more than any other (about half its latency chain in the
# control codes' replay: benchmarks/README.md, "Latency from ptxas's control codes"), which a second CTA
# on the SM could hide.
COLSUM_TWO_CTAS = config.KC(64, 256, 8, 1)


def colsum_check(device, log, shapes=((32768, 8192, 128), (8192, 262144, 32)), time_fn=None):
    """q̄'s pass alone (forward.colsum_q, bf16, after one forward for its row statistics) with the
    launchers' config and with COLSUM_TWO_CTAS, side by side per shape. ``time_fn``: the timer
    (autotune.cuda_ms by default)."""
    from gmvq_kernels import autotune
    from gmvq_kernels.forward import colsum_q, gmvq_fwd
    from gmvq_kernels.spec import code_sq_norms
    from gmvq_kernels.tiles import interpreter_operand

    time_fn = time_fn or autotune.cuda_ms
    prec = config.DEFAULT_DOT_PRECISION
    for N, K, D in shapes:
        x, means, a, b, v = kernel_inputs(N, K, D, torch.bfloat16, device)
        _, saved = gmvq_fwd(x, means, a, b, v, tau=1.0, hard=False, seed=0, noise=None, dot_precision=prec)
        mm = code_sq_norms(means)
        xk, mk = interpreter_operand(x), interpreter_operand(means)  # as gmvq_fwd passes them (on a GPU: x, means)

        def q_bar():
            colsum_q(xk, mk, a, b, v, mm, saved["stats"], saved["x_sq"], saved["x_parts"], prec)

        row = dict(check="colsum_tiles", N=N, K=K, D=D, two_ctas=list(astuple(COLSUM_TWO_CTAS)),
                   config=list(astuple(config.colsum_config(D, x.dtype, device))), ms_default=time_fn(q_bar))
        with config.override(colsum=COLSUM_TWO_CTAS):
            row["ms_two_ctas"] = time_fn(q_bar)
        log(row)


@triton.jit
def _touch(p, B: tl.constexpr):  # host_check's empty launch
    o = tl.arange(0, B)
    tl.store(p + o, tl.load(p + o) + 1.0)


def host_us(device, f, iters):
    """µs per call of ``f`` over ``iters`` calls with one sync at the end (CUDA launches are
    asynchronous, so this is host time)."""
    for _ in range(min(10, iters)):
        f()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        f()
    sync(device)
    return (time.perf_counter() - t) / iters * 1e6


def launch_check(device, log, iters=300):
    """Host µs per launch of each kernel of host_check's fwd+bwd, launched alone through the Triton JIT
    (the launches recorded once, then each replayed ``iters`` times), beside the empty kernel's and the
    part of it a CPU can time (``devtools.bind_cost_us``: binding, specialisation, cache key): what the
    JIT's per-argument work (43–49 arguments in the forward, dx and dμ) costs on this host."""
    from gmvq_kernels import backward, devtools, forward

    x, m, lv = speed.make_inputs(8, 16, 16, torch.bfloat16, device, True)
    with devtools.record_launches(forward, backward, tiles) as launches:  # recorded, not run
        speed.gmvq_loss("triton")(x, m, lv).backward()
    buf = torch.zeros(16, device=device)
    row = dict(check="launch_overhead", N=8, K=16, D=16, iters=iters,
               us_empty_triton_launch=host_us(device, lambda: _touch[(1,)](buf, B=16), iters))
    for launch in launches:
        row[launch.name] = dict(args=len(launch.args) + len(launch.kwargs), bind_us=devtools.bind_cost_us(launch),
                                us=host_us(device, lambda: launch.fn[launch.grid](*launch.args, **launch.kwargs),
                                           iters))
    log(row)


def host_check(device, log, out_dir, iters=300):
    """Where the host time of one fwd+bwd at a tiny shape (8, 16, 16) goes, in µs per call over
    ``iters`` calls with one sync at the end (CUDA launches are asynchronous, so this is host time):
    fwd+bwd, the forward alone without and with a graph to build, the backward alone, SDPA's fwd+bwd and
    one empty Triton launch; whether the call syncs the device (torch's sync debug mode); and into
    host_profile.txt torch.profiler's CPU table (per op, every thread: on CUDA the backward runs on
    autograd's device thread) and a cProfile of the calling thread."""
    import cProfile
    import io
    import pstats

    cuda = device.type == "cuda"
    per_call = functools.partial(host_us, device, iters=iters)
    x, m, lv = speed.make_inputs(8, 16, 16, torch.bfloat16, device, True)
    fn = speed.gmvq_loss("triton")
    loss = fn(x, m, lv)
    buf = torch.zeros(16, device=device)
    row = dict(check="host_overhead", N=8, K=16, D=16, iters=iters,
               us_per_fwd_bwd=per_call(lambda: fn(x, m, lv).backward()),
               us_fwd_no_grad=per_call(lambda: gk.gmvq(x.detach(), m.detach(), lv.detach(), impl="triton")),
               us_fwd_with_graph=per_call(lambda: fn(x, m, lv)),
               us_bwd_alone=per_call(lambda: loss.backward(retain_graph=True)),
               us_empty_triton_launch=per_call(lambda: _touch[(1,)](buf, B=16)))
    if cuda:
        row["us_sdpa_fwd_bwd"] = per_call(lambda: speed.sdpa_loss(x, m, lv).backward())
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn(x, m, lv).backward()
            row["device_sync"] = "none seen"
        except RuntimeError as e:
            row["device_sync"] = str(e)[:300]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    text = io.StringIO()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            fn(x, m, lv).backward()
        sync(device)
    text.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
    cprof = cProfile.Profile()
    cprof.enable()
    for _ in range(iters):
        fn(x, m, lv).backward()
    sync(device)
    cprof.disable()
    pstats.Stats(cprof, stream=text).sort_stats("tottime").print_stats(30).sort_stats("cumulative").print_stats(40)
    with open(os.path.join(out_dir, "host_profile.txt"), "w") as fh:
        fh.write(text.getvalue())
    log(row)


def capture(fn):
    """``fn`` captured in a CUDA graph, after three warm-up calls (compiles) on a side stream, as
    capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_check(device, log, shape=(8192, 1024, 64)):
    """The kernels' own time at a host-bound shape, and CUDA graphs as a training mode: one fwd+bwd with
    its seed in device memory (noise.seed_on_device) captured in a CUDA graph and replayed for two
    seeds set in place. Each replay's gradients must equal eager's with that seed as an int, bitwise,
    and differ between the two seeds (new noise per replay). Timed beside eager and SDPA in eager."""
    x, m, lv = speed.make_inputs(*shape, torch.bfloat16, device, True)
    leaves = (x, m, lv)
    seed = torch.zeros((), dtype=torch.int64, device=device)

    def step(s):
        for t in leaves:
            t.grad = None
        speed.gmvq_loss("triton", seed=s)(x, m, lv).backward()

    graph = capture(lambda: step(seed))
    static_grads = [t.grad for t in leaves]  # what each replay overwrites
    replayed, eager = {}, {}
    for s in (11, 12):
        seed.fill_(s)
        graph.replay()
        replayed[s] = [g.clone() for g in static_grads]
        step(s)
        eager[s] = [t.grad for t in leaves]
    same = all(torch.equal(a, b) for s in replayed for a, b in zip(replayed[s], eager[s]))
    new_noise = not torch.equal(replayed[11][0], replayed[12][0])
    ms_graph = triton.testing.do_bench(graph.replay)
    log(dict(check="cuda_graph", N=shape[0], K=shape[1], D=shape[2], grads_equal_eager=same,
             new_noise_per_replay=new_noise, ms_graph_replay=ms_graph,
             ms_eager=triton.testing.do_bench(lambda: step(0)),
             ms_sdpa_eager=triton.testing.do_bench(lambda: speed.sdpa_loss(x, m, lv).backward())))


def module_graph_check(device, log, shape=(8192, 1024, 64)):
    """A GaussianMixtureVQ training step (bf16 autocast) captured in a CUDA graph, with
    ``device_seed=True``: the module's step counter lives on the device and advances inside the graph,
    so each replay draws the next seed's noise. Two replays against an eager copy of the module (same
    parameters, counter copied after the warm-up): gradients bitwise equal, new noise per replay, both
    counters advanced alike. Timed beside the eager step."""
    import copy

    N, K, D = shape
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(D, K, seed=5, device_seed=True).to(device)
    twin = copy.deepcopy(vq)
    x = torch.randn(N, D, device=device)

    def step(m):
        for p in m.parameters():
            p.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = m(x)
        (out.loss + out.quantized.float().square().mean()).backward()

    graph = capture(lambda: step(vq))
    twin._next_seed.copy_(vq._next_seed)  # capture runs nothing: the counter stands at the next step
    static_grads = [p.grad for p in vq.parameters()]
    replayed, eager = [], []
    for _ in range(2):
        graph.replay()
        replayed.append([g.clone() for g in static_grads])
        step(twin)
        eager.append([p.grad for p in twin.parameters()])
    same = all(torch.equal(a, b) for r, e in zip(replayed, eager) for a, b in zip(r, e))
    log(dict(check="module_cuda_graph", N=N, K=K, D=D, grads_equal_eager=same,
             new_noise_per_replay=not torch.equal(replayed[0][0], replayed[1][0]),
             counters_equal=int(vq._next_seed) == int(twin._next_seed) == 5 + 3 + 2,
             ms_graph_replay=triton.testing.do_bench(graph.replay),
             ms_eager=triton.testing.do_bench(lambda: step(twin))))


def checkpoint_check(device, log, shape=(4096, 1024, 64)):
    """GaussianMixtureVQ (bf16 autocast on a GPU) with two calls per step under torch.utils.checkpoint,
    in both modes, against the same step without checkpointing: a rerun must draw the noise of the
    call it repeats (README, "Activation checkpointing"). Gradients bitwise equal without reentrant
    checkpointing, within 10⁻⁶ relative with it (another order of addition); the counters alike."""
    from torch.utils.checkpoint import checkpoint

    N, K, D = shape
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(N, D, generator=gen).to(device) for _ in range(2)]

    def step(reentrant):
        torch.manual_seed(0)
        enc, vq = torch.nn.Linear(D, D).to(device), gk.GaussianMixtureVQ(D, K, seed=5).to(device)
        call = vq if reentrant is None else (lambda h: checkpoint(vq, h, use_reentrant=reentrant))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs = [call(enc(x)) for x in xs]  # (quantized, codes, loss): a reentrant checkpoint returns a tuple
        sum(loss + q.float().square().mean() for q, _, loss in outs).backward()
        return [p.grad for p in (*enc.parameters(), *vq.parameters())], int(vq._next_seed)

    plain, seed_plain = step(None)
    for reentrant in (False, True):
        grads, seed = step(reentrant)
        err = max(rel_err(g, w) for g, w in zip(grads, plain))
        log(dict(check="checkpoint", N=N, K=K, D=D, reentrant=reentrant, max_rel_err=err,
                 counters_equal=seed == seed_plain == 5 + 2, ok=seed == seed_plain and err <= (1e-6 if reentrant else 0)))


def amp_backward_check(device, log, shape=(4096, 1024, 64)):
    """GaussianMixtureVQ with heads (its projection hands gmvq rows in the autocast dtype beside fp32
    means) under autocast, bf16 and fp16, with the backward called inside the region against one after
    it: the op's backward runs at its own precision there (README, "AMP"), so every gradient is
    bitwise equal."""
    N, K, D = shape
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(4)).to(device)
    for amp in (torch.bfloat16, torch.float16):
        grads = []
        for inside in (True, False):
            torch.manual_seed(0)  # the same projection both times
            vq = gk.GaussianMixtureVQ(D, K, seed=5, heads=2).to(device)
            xx = x.clone().requires_grad_()
            with torch.autocast(device.type, dtype=amp):
                quantized, _, loss = vq(xx)
                total = loss + quantized.float().square().mean()
                if inside:
                    total.backward()
            if not inside:
                total.backward()
            grads.append([xx.grad, *(p.grad for p in vq.parameters())])
        equal = all(torch.equal(a, b) for a, b in zip(*grads))
        finite = all(bool(torch.isfinite(g).all()) for g in grads[1])
        log(dict(check="amp_backward", N=N, K=K, D=D, amp=str(amp).replace("torch.", ""), equal=equal,
                 finite=finite, ok=equal and finite))


def capture_check(device, log, shape=(4096, 1024, 64)):
    """The eval module in bf16 captured by torch.jit.trace and by torch.export: on new latents of the
    traced shape, the codes and quantized values of an eager call, bitwise (README, "torch.compile":
    under a graph capture the op takes its custom-op form; a kernel launch is invisible to the jit
    tracer)."""
    import warnings

    N, K, D = shape
    gen = torch.Generator().manual_seed(6)
    x, again = (torch.randn(N, D, generator=gen).to(device, torch.bfloat16) for _ in range(2))
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(D, K, learnable_prior=True).to(device, torch.bfloat16).eval()
    want = vq(again)
    with warnings.catch_warnings():  # torch's deprecation of jit.trace, the tracer's own warnings
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(vq, (x,), check_trace=False)
    for how, fn in (("jit.trace", traced), ("export", torch.export.export(vq, (x,)).module())):
        got = fn(again)
        equal = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        log(dict(check="capture", how=how, N=N, K=K, D=D, equal=equal, ok=equal))


def eval_check(device, log, shape=(32768, 8192, 128), time_fn=None):
    """The module's eval call (codes from the encode kernel since 2026-12-05) beside its training call
    (the forward it ran in eval mode before), both under no_grad, bf16: the time each takes."""
    time_fn = time_fn or triton.testing.do_bench
    N, K, D = shape
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(7)).to(device, torch.bfloat16)
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(D, K, seed=1).to(device, torch.bfloat16)
    row = dict(check="eval_call", N=N, K=K, D=D)
    with torch.no_grad():
        for mode in ("train", "eval"):
            getattr(vq, mode)()
            row[f"ms_{mode}"] = time_fn(lambda: vq(x))
    log(row)


def device_ms(fn, device, reps):
    """{kernel name (``other`` for torch's own): ms per call of ``fn``} (torch.profiler, mean over ``reps``
    calls after a warm-up); off CUDA the profiler's CPU table stands in (``--dry``)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        sync(device)
    per_kernel = {}
    for e in prof.key_averages():
        # self time: a CPU op's device time is its kernels', which are counted as themselves
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0:
            name = e.key if e.key.startswith("_gmvq") else "other"
            per_kernel[name] = per_kernel.get(name, 0.0) + us / reps / 1e3
    return {k: round(v, 4) for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])}


def kernel_times_check(device, log, shapes=speed.ANCHOR_SHAPES, reps=3):
    """Device time per kernel of one bf16 fwd+bwd of speed.py's objective at each shape, soft and hard, to
    set beside static_cost.py's estimates per kernel (``--calibrate`` fits its fit_ms to the soft ones):
    where they part is what the model misses (memory traffic, tails, latency; hard mode timed 9–16 %
    over soft on 2026-12-04 where fit_ms differs by −2 to +1 %, the instruction counts by +2 to +3 %).
    Then the tokenizer path's (``gmvq_encode``), with and without the norm dot (GMVQ_NORM_DOT): on
    2026-12-04 it timed slower than on 2026-11-30, which its device time, apart from the host's, can
    explain or not."""
    for N, K, D in shapes:
        x, m, lv = speed.make_inputs(N, K, D, torch.bfloat16, device, True)
        for mode in ("soft", "hard"):
            fn = speed.gmvq_loss("triton", hard=mode == "hard")
            per_kernel = device_ms(lambda: fn(x, m, lv).backward(), device, reps)
            log(dict(check="kernel_times", mode=mode, N=N, K=K, D=D, ms_per_fwd_bwd=per_kernel,
                     ms_total=round(sum(per_kernel.values()), 4)))
        with torch.no_grad():
            encode = {}
            for norm_dot in (True, False):
                with config.env_flag(config.NORM_DOT_ENV, norm_dot):
                    encode["norm_dot" if norm_dot else "no_norm_dot"] = device_ms(
                        lambda: gk.gmvq_encode(x, m, lv, impl="triton"), device, reps)
        log(dict(check="kernel_times_encode", N=N, K=K, D=D, ms_per_call=encode))


def overlap_check(device, log):
    """benchmarks/overlap_probe.py on the GPU: a row kernel's loop in Gluon with each distance dot waited
    on at once (as Triton's kernels are) and with the next tile's kept in flight over the elementwise
    work, into fresh registers (which ptxas issues late) or into the loop-carried tile's (issued early);
    each timed at its own occupancy and, with the kernels' MUFU logs, pinned at their 8 warps per SM, and
    their outputs compared (the same math). Says whether lever 14 pays."""
    import overlap_probe

    for row in overlap_probe.gpu_times():
        log(dict(check="overlap", **row))


TUNE_SHAPES = ((32768, 8192, 64), (32768, 8192, 128), (65536, 16384, 256))


def kernel_inputs(N, K, D, dtype, device):
    """x (N, D), means (K, D) ~ N(0, 1) in ``dtype`` and the per-code constants a, b, v of σ² = 1 and a
    uniform prior: what the kernels' launchers take (tuning and d512_check time the kernels alone)."""
    import math

    from gmvq_kernels.spec import component_terms

    x, means = (torch.randn(n, D, device=device).to(dtype) for n in (N, K))
    a, b, v = (t.contiguous() for t in component_terms(torch.zeros(K, device=device),
                                                      torch.full((K,), -math.log(K), device=device), D))
    return x, means, a, b, v


def tune(device, log, deadline, out_dir, shapes=TUNE_SHAPES, config_path=config.__file__, time_fn=None):
    """Winners per (arch, dtype, kind, D bucket) at ``shapes`` in bf16 and fp32 (autotune.py), written
    into ``config_path`` and copied to ``out_dir`` (see the module docstring). ``time_fn``: the timer
    (autotune.cuda_ms by default)."""
    from gmvq_kernels import autotune

    info = speed.env_info(device)
    stamp = f"{info['date']}, {info['device']}, torch {info['torch']}, triton {info['triton']}"
    winners, report = {}, []
    for dtype in (torch.bfloat16, torch.float32):
        for (N, K, D) in shapes:
            if time.time() > deadline:
                break
            x, means, a, b, v = kernel_inputs(N, K, D, dtype, device)
            prec = config.DEFAULT_DOT_PRECISION
            timer = dict(time_fn=time_fn or autotune.cuda_ms)
            res = autotune.tune_training(x, means, a, b, v, tau=0.5, hard=False, dot_precision=prec, **timer)
            res.update(autotune.tune_encode(x, means, a, b, dot_precision=prec, **timer))
            new = {key: val for key, val in res.items() if key not in winners}  # a bucket's first shape decides
            for key, (cfg, times) in new.items():
                winners[key] = cfg
                row = dict(check="tune", key=list(key), shape=[N, K, D], dtype=str(dtype), winner=list(astuple(cfg)),
                           ms={str(astuple(c)): t for c, t in times.items()})
                report.append(row)
                log(row)
            # after every shape: a run cut short by its time limit keeps what it has measured
            autotune.write_tuned(config_path, {key: cfg for key, (cfg, _) in new.items()}, stamp)
            shutil.copy(config_path, os.path.join(out_dir, "config.py"))
            with open(os.path.join(out_dir, "tune.json"), "w") as fh:
                json.dump(report, fh, indent=1)
    return report


def wall_ms(fn):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def noise_check(device, log, rows=4096, cols=1024):
    """The GPU's noise (MUFU logs) against the exact transform of the same Philox words in float64, and a
    Kolmogorov–Smirnov test of 2²² draws against the Gumbel CDF."""
    import numpy as np

    from gmvq_kernels.noise import philox_words_numpy

    g = gk.gumbel_noise(rows, cols, seed=77, device=device).double().cpu()
    words = torch.from_numpy(philox_words_numpy(rows, cols, 77).astype(np.int64))
    u = ((words >> 9).double() + 0.5) * 2.0**-23
    exact = -torch.log(-torch.log(u))
    err = ((g - exact).abs() / exact.abs().clamp_min(1.0)).max().item()
    x = np.sort(g.numpy().ravel())
    cdf = np.exp(-np.exp(-x))
    i = np.arange(1, x.size + 1)
    d = max(np.max(i / x.size - cdf), np.max(cdf - (i - 1) / x.size))
    log(dict(check="noise", draws=int(x.size), max_err_vs_exact=err, ks_d=float(d),
             ks_d_critical_1e3=1.95 / np.sqrt(x.size), mean=float(x.mean()), var=float(x.var()),
             ok=bool(err < 5e-6 and d < 1.95 / np.sqrt(x.size))))


def nan_check(device, log, shape=(9, 37, 6)):
    """The NaN policy on the GPU (README, "NaN policy"): rows of x holding NaN, inf, or a squared norm
    past fp32 give NaN outputs, code −1 and a NaN q̄, the other rows exactly what they are without them;
    in soft mode the gradients are NaN exactly where the reference's are. Both batches take the seeded
    path (until 2026-12-04 the clean one took gumbel_noise's tensor, which fp32 does not match bitwise on a
    GPU: that check failed on the H200 while the policy held). Until 2026-12-01 (ninth
    session) a default tl.minimum (PTX min.f32 skips NaN) gave such rows probability 1 at every code on
    a GPU and q̄ finite garbage, which the CPU interpreter could not show."""
    N, K, D = shape
    bad = [1, 4, 7]
    good = [i for i in range(N) if i not in bad]
    for dtype in (torch.float32, torch.bfloat16):
        for hard in (False, True):
            x, m, lv, lp = testing.make_inputs(N, K, D, prior=True, dtype=dtype, device=device)
            xb = x.clone()
            xb[1, 2], xb[4, 0], xb[7] = float("nan"), float("inf"), 3e19
            kw = dict(tau=0.7, hard=hard, seed=5, impl="triton")
            out = gk.gmvq(xb, m, lv, lp, **kw)
            clean = gk.gmvq(x, m, lv, lp, **kw)
            fields = ("quantized", "log_likelihood", "latent_nll", "mixture_var", "entropy")
            rows_ok = all(bool(torch.isnan(getattr(out, f)[bad]).all()) and
                          torch.equal(getattr(out, f)[good], getattr(clean, f)[good]) for f in fields)
            # not part of the policy: the same draws handed in as gumbel_noise's tensor. On the H200
            # (2026-12-04) fp32 came out within 4.8e-7 of the seeded call, not bitwise (the kernels' own
            # draws meet the logits in registers; the compiler may contract differently)
            given = gk.gmvq(x, m, lv, lp, **dict(kw, noise=gk.gumbel_noise(N, K, 5, device=device)))
            row = dict(check="nan_policy", dtype=str(dtype), hard=hard, codes_bad=out.codes[bad].tolist(),
                       agg_posterior_nan=bool(torch.isnan(out.agg_posterior).all()), good_rows_equal=rows_ok,
                       noise_tensor_max_diff=max((getattr(given, f) - getattr(clean, f)).abs().max().item()
                                                 for f in fields))
            if not hard:  # the gradients' NaN pattern against the reference's (one NaN row)
                xg = x.clone()
                xg[1, 2] = float("nan")
                masks = {}
                for impl in ("reference", "triton"):
                    leaves = [t.clone().requires_grad_() for t in (xg, m, lv, lp)]
                    o = gk.gmvq(*leaves, impl=impl, seed=5, tau=0.7)
                    r = torch.randn(K, generator=torch.Generator().manual_seed(0)).to(device)
                    (o.quantized.float().sum() + (o.agg_posterior * r).sum()).backward()
                    masks[impl] = [t.grad.isnan().cpu() for t in leaves]
                row["grad_nan_as_reference"] = all(torch.equal(a, b) for a, b in zip(*masks.values()))
            row["ok"] = (row["codes_bad"] == [-1, -1, -1] and row["agg_posterior_nan"] and rows_ok
                         and row.get("grad_nan_as_reference", True))
            log(row)


# ncu_check's sections (details page) and metrics: where each kernel's time goes, beside the static
# model's instruction counts (static_cost.py). The stall reasons per issued instruction and the pipes'
# shares come as regexes (ncu's "regex:"), so a name that a version lacks drops out instead of failing.
NCU_SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "SchedulerStats",
                "ComputeWorkloadAnalysis")
NCU_METRICS = (r"regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$",
               r"regex:^sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active$")


def ncu_case(shape):
    """ncu_check's profiled process: one bf16 fwd+bwd of speed.py's objective at ``shape`` (N,K,D) between
    cudaProfilerStart and Stop, after two calls that compile and warm up."""
    N, K, D = (int(v) for v in shape.split(","))
    x, m, lv = speed.make_inputs(N, K, D, torch.bfloat16, torch.device("cuda"), True)
    fn = speed.gmvq_loss("triton")
    for _ in range(2):
        fn(x, m, lv).backward()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fn(x, m, lv).backward()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def parse_ncu_csv(text):
    """ncu's ``--csv --page details`` output as [{"kernel": name, metric name: value, …}] in launch order
    (values as floats where they read as numbers, thousands separators dropped; the lines before the
    CSV header, ncu's own, skipped)."""
    import csv

    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), None)
    if head is None:
        return []
    launches = {}
    for row in csv.DictReader(lines[head:]):
        if not row.get("Metric Name"):
            continue
        launch = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"]})
        value = row["Metric Value"].replace(",", "")
        try:
            launch[row["Metric Name"]] = float(value)
        except ValueError:
            launch[row["Metric Name"]] = row["Metric Value"]
    return list(launches.values())


def ncu_check(device, log, shapes=((32768, 8192, 128), (65536, 16384, 256)), timeout_s=240):
    """Nsight Compute on each kernel of one bf16 fwd+bwd at ``shapes`` (rows 2 and 3, where the H200's
    kernels took 1.5–2.9× the static model's time on 2026-12-04): speed of light, occupancy, the issue
    slots, the pipes' shares and the stall reasons per issued instruction, one row per shape. Opt-in
    (--ncu, --ncu-only): ncu replays each kernel once per group of counters it needs, at the base clock
    it locks (estimated at about a minute for both shapes; not yet run)."""
    tool = shutil.which("ncu") or next((p for p in ("/usr/local/cuda/bin/ncu",) if os.path.exists(p)), None)
    if device.type != "cuda" or tool is None:
        log(dict(check="ncu", skipped="not a GPU" if device.type != "cuda" else "no ncu"))
        return
    import subprocess

    for shape in shapes:
        cmd = [tool, "--csv", "--page", "details", "--print-units", "base", "--profile-from-start", "off",
               "--kernel-name", "regex:^_", *(a for s in NCU_SECTIONS for a in ("--section", s)),
               "--metrics", ",".join(NCU_METRICS), sys.executable, os.path.abspath(__file__),
               "--ncu-case", ",".join(map(str, shape)), "--out", "unused"]
        t = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            text, rc = r.stdout, r.returncode
            tail = (r.stdout + r.stderr)[-2000:]
        except subprocess.TimeoutExpired as e:
            text, rc = (e.stdout or b"").decode(), "timeout"
            tail = text[-2000:]
        kernels = parse_ncu_csv(text)
        log(dict(check="ncu", N=shape[0], K=shape[1], D=shape[2], returncode=rc, seconds=round(time.time() - t, 1),
                 kernels=kernels, output_tail=None if kernels else tail))


def slow(step):
    """Mark a step that takes long (inductor's compiles, compute-sanitizer, a 20 GB codebook): side by
    side, such steps start first."""
    step.slow = True
    return step


def warm_check(device, log, what, fn):
    """A warm step: ``fn()`` once, untimed, so that what it compiles (Triton's kernels, inductor's
    graphs) is in the on-disk caches before the timed steps, which then load it instead of compiling on
    the device's time. Logs the seconds, the calls that failed (``fn``'s list) and the counts of
    inductor's and AOTAutograd's caches (a graph they bypass is compiled again by the timed step)."""
    from torch._dynamo.utils import counters

    counters.clear()
    t = time.time()
    failed = fn() or []
    sync(device)
    log(dict(check="warm", what=what, seconds=round(time.time() - t, 1), failed=failed,
             inductor_cache={k: v for k, v in counters["inductor"].items() if "cache" in k},
             autograd_cache={k: v for k, v in counters["aot_autograd"].items() if "cache" in k}))


def warm_steps(device, log):
    """The warm steps (warm_check) for what the timed steps and speed.py's full run compile: each anchor
    row's Triton variants, its compiled baselines (inductor's compiles: the longest), the host and graph
    checks' variants, the sweeps, split_check's, d512_check's, cap_check's and colsum_check's."""
    def run_once(step):
        step()
        return 0.0

    def triton(provider):
        return provider.startswith("triton")

    def compiled(provider):
        return provider.endswith("_compile")

    rows = range(len(speed.ANCHOR_SHAPES))
    steps = [lambda i=i: warm_check(device, log, f"row {i + 1}: triton", lambda: speed.warm(device, i, triton))
             for i in rows]
    # a row's two compiled baselines one after the other: at row 3 the reference's graph alone peaked at
    # 24 GB (H200, 2026-11-30), beside a 20 GB wide_check on an 80 GB H100
    steps += [slow(lambda i=i: warm_check(device, log, f"row {i + 1}: compiled baselines",
                                          lambda: speed.warm(device, i, compiled)))
              for i in rows if any(compiled(c[0]) for c in speed.anchor_cases(i))]

    def host_and_graph_shapes():  # host_check's and launch_check's tiny shape; graph_check's seed on the device
        x, m, lv = speed.make_inputs(8192, 1024, 64, torch.bfloat16, device, True)
        speed.gmvq_loss("triton", seed=torch.zeros((), dtype=torch.int64, device=device))(x, m, lv).backward()
        row = speed.measure("triton", "fwd_bwd", "bf16", 8, 16, 16, device, warm=True)
        return [row] if "status" in row else []

    return steps + [
        lambda: warm_check(device, log, "host and graph shapes", host_and_graph_shapes),
        lambda: warm_check(device, log, "sweeps", lambda: speed.warm(device)),
        lambda: warm_check(device, log, "split_k", lambda: split_check(device, log, warm=True)),
        lambda: warm_check(device, log, "d512_tiles", lambda: d512_check(device, lambda row: None, time_fn=run_once)),
        lambda: warm_check(device, log, "register_caps", lambda: cap_check(device, lambda row: None, time_fn=run_once)),
        lambda: warm_check(device, log, "colsum_tiles",
                           lambda: colsum_check(device, lambda row: None, time_fn=run_once)),
    ]


def shares_device(device, log):
    """Whether another process can use the GPU beside this one (side_by_side needs it; a GPU in an
    exclusive compute mode refuses a second context): a child process makes one while this one holds
    its own. Logged when it cannot."""
    if device.type != "cuda":
        return True
    import subprocess

    torch.zeros(1, device=device)  # this process's context
    probe = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        ok, tail = r.returncode == 0, (r.stdout + r.stderr)[-1500:]
    except Exception as e:  # a hung or unstartable probe: one step at a time, never no run
        ok, tail = False, repr(e)
    if not ok:
        log(dict(check="side_by_side", ok=False, why="a second process could not use the GPU: one step at a time",
                 output_tail=tail))
    return ok


def argv_without(*options):
    """This script's command line (sys.argv) without ``options`` and their values (``--opt v`` or
    ``--opt=v``): what a process it starts in its place or beside it is given again."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith(options):
            skip = a in options
            continue
        argv.append(a)
    return [sys.executable, os.path.abspath(__file__), *argv]


def child_argv(step, t0):
    """This script's command line for side_by_side's child that runs ``step`` alone, on the first start's
    clock (--t0)."""
    return argv_without("--resume-at", "--t0", "--jobs", "--only") + ["--only", str(step), "--t0", repr(t0)]


def side_by_side(commands, jobs, timeout_s, logfile, log):
    """Run ``commands`` ({step: argv}) as child processes, ``jobs`` at a time, started in the dict's order.
    Each child prints its rows as JSON lines (its other output is kept for errors); as it ends, they go
    to ``logfile`` and stdout as printed (elapsed_s on the parent's clock: the children get --t0). A
    child that ends with an exit code other than 0, or is killed after ``timeout_s``, also gets an error
    row (``log``) with its step, exit code and output's tail. The CUDA context is the child's own: a
    fault ends that step alone."""
    import subprocess
    import tempfile

    pending, running = list(commands.items()), {}
    with tempfile.TemporaryDirectory() as tmp:
        while pending or running:
            while pending and len(running) < jobs:
                step, argv = pending.pop(0)
                out = open(os.path.join(tmp, f"{step}.out"), "w+")
                running[step] = (subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), out, time.time())
            time.sleep(0.1)
            for step, (proc, out, started) in list(running.items()):
                killed = proc.poll() is None and time.time() - started > timeout_s
                if proc.poll() is None and not killed:
                    continue
                if killed:
                    proc.kill()
                rc = proc.wait()
                out.seek(0)
                text = out.read()
                out.close()
                del running[step]
                for line in text.splitlines():
                    if line.startswith('{"check": '):
                        print(line, flush=True)
                        logfile.write(line + "\n")
                logfile.flush()
                if rc != 0:
                    log(dict(check="error", step=step, returncode=rc, killed_after_s=timeout_s if killed else None,
                             output_tail=text[-3000:]))


def device_fault(e):
    """Whether ``e`` leaves this process's CUDA context unusable (an illegal address, say): every later
    call in the process then fails with it, so the run goes on in a fresh process (``restart``)."""
    return isinstance(e, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(e)


def restart(step, t0, logfile):
    """Run this script again from ``step`` (--resume-at) in this process's place, with the same arguments
    and the first start's clock (--t0: the budget counts from it), appending to the same log."""
    logfile.close()
    sys.stdout.flush()
    os.execv(sys.executable, argv_without("--resume-at", "--t0") + ["--resume-at", str(step), "--t0", repr(t0)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=420)
    p.add_argument("--tune", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--dry", action="store_true", help="tiny shapes on CPU (interpreter): test this script")
    p.add_argument("--resume-at", type=int, default=0,
                   help="start at this step (0-based: the untimed checks and the warm steps, the timed checks, "
                        "the benchmarks, --tune), appending to OUT's log; a faulting step restarts the script "
                        "here at the next one")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes for the steps that time nothing (the checks against float64 and the like, "
                        "and the warm steps), side by side before the timed steps: default min(8, cores / 2) "
                        "on a GPU, 1 with --dry; 1: every step in this process, in order")
    p.add_argument("--step-timeout-s", type=float, default=420,
                   help="with --jobs > 1: a step's process still running after this long is killed (logged); "
                        "serially, torch.compile's check took 81 s on 2026-12-04, and side by side compiles "
                        "share the host's cores")
    p.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)  # the first process's start
    p.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # side_by_side's child: one step
    p.add_argument("--ncu", action="store_true",
                   help="also run Nsight Compute on the kernels at rows 2 and 3 (ncu_check; after the timed checks)")
    p.add_argument("--ncu-only", action="store_true", help="ncu_check alone (after the env row)")
    p.add_argument("--ncu-case", default=None, help=argparse.SUPPRESS)  # ncu_check's child: "N,K,D"
    args = p.parse_args()
    if args.ncu_case:
        return ncu_case(args.ncu_case)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time() if args.t0 is None else args.t0
    device = torch.device("cpu" if args.dry else "cuda")
    if args.dry:  # the interpreter with the GPU's bf16 rounding and min/max NaN semantics, as the tests run it
        testing.interpreter_like_gpu()
    if args.only is not None:  # side_by_side's child: its rows go to the parent through stdout alone
        logfile = open(os.devnull, "w")
    else:
        logfile = open(os.path.join(args.out, "correctness.jsonl"), "a" if args.resume_at else "w")

    def log(row):
        row = dict(row, elapsed_s=round(time.time() - t0, 1))
        print(json.dumps(row), flush=True)
        logfile.write(json.dumps(row) + "\n")
        logfile.flush()

    # which configs this GPU takes: the arch (TUNED's key) and its family (config.ARCH_CONFIGS), its shared
    # memory per block (below an A100's: config.SMALL_SHARED_CONFIGS) and whether the forward's lazy rescale
    # runs (off on compute capability 10.x)
    if args.only is None:
        log(dict(check="env", **speed.env_info(device), arch=config.arch(device),
                 arch_family=config.arch_family(device), shared_per_block=config.shared_limit(device),
                 small_shared_configs=config.small_shared(device),
                 lazy_rescale_arch=not config.tensor_memory_arch(device), resume_at=args.resume_at))
    checks = [
        lambda: noise_check(device, log),
        lambda: nan_check(device, log),
        lambda: full_check(2048, 4096, 64, torch.float32, "ieee", False, device, log),
        lambda: full_check(2048, 4096, 64, torch.float32, "tf32x3", True, device, log),
        lambda: full_check(2048, 4096, 64, torch.float32, "tf32", False, device, log),
        lambda: full_check(2048, 4096, 64, torch.bfloat16, None, False, device, log),
        lambda: full_check(1000, 3000, 100, torch.bfloat16, None, True, device, log),
        # soft at BLOCK_D = 128: the forward's lazy rescale (forward.LAZY_MIN_BLOCK_D), soft sums kept
        lambda: full_check(1000, 3000, 100, torch.bfloat16, None, False, device, log),
        # a D below its tile: fp32 (its Δ pass recomputes y and Y) and the D = 256 bucket
        lambda: full_check(1000, 3000, 100, torch.float32, "tf32x3", False, device, log),
        lambda: full_check(1000, 3000, 200, torch.bfloat16, None, True, device, log),
        # hard mode with fewer code blocks than config.HARD_ROWS_MIN_BLOCKS: dμ keeps the one-hot in its loop
        lambda: full_check(1000, 500, 100, torch.bfloat16, None, True, device, log),
        lambda: full_check(2048, 4096, 64, torch.bfloat16, None, False, device, log, offset=30.0),
        lambda: full_check(2048, 4096, 64, torch.bfloat16, None, False, device, log, offset=30.0, norm_dot=False),
        lambda: full_check(1000, 3000, 100, torch.bfloat16, None, True, device, log, offset=30.0),
        lambda: full_check(1000, 3000, 100, torch.float16, None, True, device, log, offset=30.0),
        lambda: full_check(777, 1234, 256, torch.float32, "tf32x3", False, device, log),
        # fp32 at a small τ: dμ's Y − Δy cancels exactly only if its Y (codes × rows tiles) equals the Δ
        # pass's (rows × codes) bit for bit; the interpreter's matmuls do not (README, "Correctness")
        lambda: full_check(2048, 4096, 64, torch.float32, "tf32x3", False, device, log, tau=0.1),
        lambda: full_check(2048, 4096, 64, torch.float32, "ieee", False, device, log, tau=0.1),
        # a trained quantizer's inputs (rows 0.03 spreads from a code, σ² to match): the interpreter's fp32
        # dots, rounded differently by orientation, leave dμ 10² × the reference's error there (README)
        lambda: full_check(2048, 4096, 64, torch.float32, "ieee", False, device, log, near_codes=0.03),
        lambda: full_check(2048, 4096, 64, torch.float32, "tf32x3", True, device, log, near_codes=0.03),
        lambda: full_check(2048, 4096, 64, torch.bfloat16, None, False, device, log, near_codes=0.03),
        # the D = 512 bucket's tiles of 2026-12-02 (mma.sync row tiles on sm_90), never run on a GPU before
        lambda: full_check(1000, 3000, 512, torch.bfloat16, None, False, device, log),
        lambda: full_check(1000, 3000, 512, torch.bfloat16, None, True, device, log),
        lambda: full_check(1000, 3000, 128, torch.bfloat16, None, True, device, log),
        # τ = 1: the backward's y from q and the draws' 1/log₂ u by rcp.approx (speed history, item 27)
        lambda: full_check(2048, 4096, 64, torch.bfloat16, None, False, device, log, tau=1.0),
        lambda: full_check(1000, 3000, 128, torch.bfloat16, None, True, device, log, tau=1.0),
        # and the forward's y from q's exponentials, its sums moved lazily (BLOCK_D = 128; speed history, item 28)
        lambda: full_check(1000, 3000, 100, torch.bfloat16, None, False, device, log, tau=1.0),
        lambda: full_check(2048, 4096, 64, torch.float32, "tf32x3", True, device, log, tau=1.0),
        lambda: window_check(65536, 262144, 256, torch.bfloat16, [0, 65536 - 64], device, log),
        lambda: window_check(16384, 262144, 32, torch.bfloat16, [0, 8192, 16384 - 64], device, log),
        slow(lambda: wide_check(device, log)),
        lambda: determinism_check(device, log),
        slow(lambda: compile_check(device, log)),
        slow(lambda: compile_check(device, log, mode="reduce-overhead")),
        lambda: checkpoint_check(device, log),
        lambda: amp_backward_check(device, log),
        lambda: capture_check(device, log),
    ] + warm_steps(device, log)
    timed = [
        lambda: host_check(device, log, args.out),
        lambda: launch_check(device, log),
        lambda: graph_check(device, log),
        lambda: module_graph_check(device, log),
        lambda: eval_check(device, log),
        lambda: split_check(device, log),
        lambda: d512_check(device, log),
        lambda: cap_check(device, log),
        lambda: colsum_check(device, log),
        lambda: kernel_times_check(device, log),
        lambda: overlap_check(device, log),
    ] + ([lambda: ncu_check(device, log)] if args.ncu else [])
    if args.dry:
        checks = [
            lambda: noise_check(device, log, 64, 64),
            lambda: nan_check(device, log),
            lambda: full_check(20, 40, 8, torch.float32, "ieee", True, device, log),
            lambda: full_check(20, 40, 8, torch.bfloat16, None, False, device, log),
            lambda: full_check(20, 40, 8, torch.bfloat16, None, False, device, log, offset=30.0),
            lambda: full_check(20, 40, 8, torch.float32, "ieee", False, device, log, near_codes=0.03),
            lambda: full_check(20, 40, 8, torch.bfloat16, None, False, device, log, offset=30.0, norm_dot=False),
            lambda: full_check(20, 40, 32, torch.bfloat16, None, True, device, log),
            lambda: full_check(20, 40, 8, torch.float32, "ieee", True, device, log, tau=1.0),
            lambda: window_check(80, 48, 8, torch.bfloat16, [0, 70], device, log),
            lambda: forced_wide(lambda: wide_check(device, log, 16, 48, 64)),
            lambda: determinism_check(device, log, (20, 40, 8)),
            lambda: compile_check(device, log, (20, 40, 8)),
            lambda: compile_check(device, log, (20, 40, 8), mode="reduce-overhead"),
            lambda: checkpoint_check(device, log, (20, 40, 8)),
            lambda: amp_backward_check(device, log, (20, 40, 8)),
            lambda: capture_check(device, log, (20, 40, 8)),
            lambda: warm_check(device, log, "split_k (20, 40, 8)", lambda: split_check(device, log, ((20, 40, 8),),
                                                                                       warm=True)),
        ]
        timed = [
            lambda: host_check(device, log, args.out, iters=2),
            lambda: eval_check(device, log, (20, 40, 8), time_fn=wall_ms),
            lambda: kernel_times_check(device, log, ((20, 40, 8),), reps=1),
            lambda: split_check(device, log, ((20, 40, 8),)),
            lambda: d512_check(device, log, ((20, 40, 8),), time_fn=wall_ms),
            lambda: cap_check(device, log, ((20, 40, 8),), time_fn=wall_ms),
            lambda: colsum_check(device, log, ((20, 40, 8),), time_fn=wall_ms),
            lambda: ncu_check(device, log),  # on a CPU: logged as skipped
        ]
        args.skip_bench = True

    def bench():
        speed.main(["--out", os.path.join(args.out, "speed.json"), "--plot", os.path.join(args.out, "scaling.png"),
                    "--budget-s", str(max(30.0, args.budget_s - (time.time() - t0) - 60))])

    def tune_step():
        # dry: tiny shapes, wall-clock timing, and a copy of config.py to write into
        dry = dict(shapes=((40, 48, 8),), config_path=shutil.copy(config.__file__, os.path.join(args.out, "config_in.py")),
                   time_fn=wall_ms) if args.dry else {}
        tune(device, log, t0 + args.budget_s + 60, args.out, **dry)

    if args.ncu_only:
        checks, timed, args.skip_bench = [], [lambda: ncu_check(device, log)], True
    # steps 0 … len(checks) - 1 time nothing: with --jobs > 1 they run side by side, in processes of their own
    tuning = (args.tune or args.dry) and not args.ncu_only
    steps = checks + timed + [None if args.skip_bench else bench, tune_step if tuning else None]
    if args.only is not None:  # side_by_side's child: this step alone (a crash or kill the parent logs)
        try:
            steps[args.only]()
        except Exception:
            log(dict(check="error", step=args.only, traceback=traceback.format_exc()[-3000:]))
        return
    start = args.resume_at
    jobs = args.jobs or (1 if args.dry else max(1, min(8, (os.cpu_count() or 2) // 2)))
    if jobs > 1 and start < len(checks) and not shares_device(device, log):
        jobs = 1
    if jobs > 1 and start < len(checks):
        todo = sorted(range(start, len(checks)), key=lambda i: not getattr(checks[i], "slow", False))
        try:
            side_by_side({i: child_argv(i, t0) for i in todo}, jobs, args.step_timeout_s, logfile, log)
            start = len(checks)
        except Exception:  # the runner itself failed: every untimed step again, in this process
            log(dict(check="error", step="side_by_side", traceback=traceback.format_exc()[-3000:]))
    for i, step in enumerate(steps):
        if step is None or i < start:
            continue
        try:
            step()
        except Exception as e:
            log(dict(check="error", step=i, traceback=traceback.format_exc()[-3000:]))
            if device_fault(e):
                restart(i + 1, t0, logfile)
    log(dict(check="done", total_s=round(time.time() - t0, 1)))


if __name__ == "__main__":
    main()
