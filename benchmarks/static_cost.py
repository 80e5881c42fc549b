"""Static cost report of the fused kernels: what an H200 would do, read from sm_90 SASS on a CPU.

For each shape, mode (soft/hard) and dtype it captures every kernel launch of one forward + backward of
the training objective of ``speed.py`` (ALBO terms + a reconstruction stand-in on ``quantized``: upstream
gradients for quantized, latent_nll and agg_posterior; mode "encode": the one launch of the tokenizer
path ``gmvq_encode``) without running it, with the configs the launchers
pick on an H100/H200 (132 SMs) and the JIT's argument specialisation. Each distinct kernel is compiled
for sm_90 (and sm_80 with ``--arch 80 90``) with the ptxas bundled in triton's wheel and disassembled
with the bundled nvdisasm. Per kernel it reports registers, spill bytes, whether ptxas serialised its
wgmma (its warnings C7515, C7512, ...: each then waits for the one before, which the instruction
counts do not show), shared memory, resident warps/SM, grid, and the thread-instructions per (n, k)
element of one pass by class, read from the main loop (the outermost backward branch), plus a loop
after it at its share of the main loop's iterations (``after_loop_share``: hard mode's dμ), with the
loop's code that a forward branch jumps over counted at the share of iterations that run it
(``skippable_share``: the forward's lazy rescale, LAZY_MOVES per program assumed; other branches
inside the loop count as taken). A
FlashAttention-2-style kernel pair (forward + backward with queries = x, keys = values = the
codebook) is compiled in the same run as the yardstick, and so is the standalone kernel of
``gumbel_noise`` (the cost of the noise alone, per element drawn).

Throughput model (H200 SXM, stated, not measured): 132 SMs at 1.98 GHz; per SM and clock 4 warp-
instructions issued (128 thread-instructions), FP32 128, integer ALU 64, IMAD 64, MUFU 16, conversions 16,
LDS/STS/SHFL 32 thread-ops, HGMMA 4096 bf16/fp16 FLOPs (2048 tf32). A loop iteration costs the slowest
of these pipes (they overlap); issue is scaled down by resident warps / 8 below 8 warps per SM (each
scheduler needs two warps to hide latency). A kernel costs iterations × CTAs per SM (the busiest SM,
⌈grid / 132⌉) × that; memory traffic, launch and host time are not modelled. ``serial_ms`` is the same
with the tensor cores' time added to the slowest other pipe's instead of overlapped: the H200's timings
of the 2026-11-30 kernels were 1.75–2.03× it, against 1.95–3.59× ``model_ms``
(benchmarks/results/static-2026-12-04-serial/). With ``--arch 80`` the sm_80
code is counted the same way, but its model_ms still applies the H200's rates (a comparison of counts,
not an A100 estimate).

``fit_ms`` is the estimate fitted to a GPU's per-kernel times: FIT_FACTOR × (the issue slots at 4
warp-instructions per SM and clock + the loop's HGMMA FLOPs at the tensor cores' peak), over N·K / 132
SMs, without the pipes, occupancy or waves of ``model_ms``. ``--calibrate TIMES.jsonl REPORT.json``
fits FIT_FACTOR anew: the median over the kernels of a ``gpu_check.py`` run (its ``kernel_times``
records, soft mode, ≥ 0.1 ms each) of measured / (issue + tensor) in a static report of the same code,
compiled by the run's triton; it prints each kernel's ratio to the fit, hard mode's too. Fitted on the
H200 run of 2026-12-04 (bf16, soft; benchmarks/results/static-2026-12-04-fit/): the forward, q̄, dx
and dμ at rows 2–4 within 0.87–1.14 of it, the Δ pass 1.39 and 1.59.

    python benchmarks/static_cost.py                      # anchor shapes, bf16, soft, hard and encode
    python benchmarks/static_cost.py --out F.json --md F.md
    python benchmarks/static_cost.py --fast               # three small shapes; exit 1 on any spill or
                                                          # serialised wgmma (CI)
    python benchmarks/static_cost.py --calibrate results/NVIDIA_H200-2026-12-04/correctness_run2.jsonl \
        results/static-2026-12-04-dmuorder/static36.json  # FIT_FACTOR from a GPU run's kernel times

The launches take the configs the launchers pick on that arch: ``config.TUNED``'s measured entries first
(what an H100/H200 runs), then the tables, off sm_90 with ``config.ARCH_CONFIGS``' entries for the arch's
family (``--arch 80``: what an A100 runs). ``--fast`` takes the tables alone: it guards the kernels at the
configs they were designed for (what a GPU without measured entries runs), as before the first tuning.
``--config KIND=BN,BK,WARPS,STAGES[,MAXNREG]`` puts one kind's config in place of any of these, for every D
(``config.override``; e.g. ``row=64,32,4,2,168``: the row kernels under a cap of 168 registers).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels: the report reads real sm_90 code

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from gmvq_kernels import backward, config, devtools, encode, forward, noise, tiles  # noqa: E402
from gmvq_kernels.spec import component_terms  # noqa: E402

ANCHOR_SHAPES = [(8192, 1024, 64), (32768, 8192, 128), (65536, 16384, 256), (8192, 262144, 32)]
# --fast (CI): a small shape, one with enough codes that N = 2048 splits the codebook (split-K), and
# D = 128 (spill-free since docs/speed_history.md, item 16; the Δ pass runs there)
FAST_SHAPES = [(2048, 1024, 64), (2048, 65536, 64), (2048, 1024, 128)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# --- the H200 model (see the module docstring)
SMS, CLOCK_HZ = 132, 1.98e9
RATES = {"FP32": 128, "ALU": 64, "IMAD": 64, "MUFU": 16, "CONV": 16, "LDS/STS": 32, "SHFL": 32}
TENSOR_FLOPS_PER_CLK = {"bf16": 4096, "fp16": 4096, "tf32": 2048}
REGS_PER_SM, SHARED_PER_SM, MAX_WARPS = 65536, 233472, 64
# fit_ms's factor: --calibrate on the H200 run of 2026-12-04 (14 kernel times of bf16 soft, triton 3.6.0's
# code: results/static-2026-12-04-fit/)
FIT_FACTOR = 1.88
FIT_MIN_MS = 0.1  # --calibrate leaves out shorter kernel times: launch latency, not the loop


def capture(N, K, D, dtype, mode, dot_precision="tf32x3", cc=90, tuned=True, tau=1.0):
    """Launches of one fwd+bwd of the training objective (see module docstring), or with mode "encode"
    of the tokenizer path (codes only); nothing run. The launchers pick their configs as on a GPU of
    compute capability ``cc``: config.TUNED's measured entries for that arch first, then the tables
    with config.ARCH_CONFIGS' entries for its family; with ``tuned`` False, the tables alone.
    ``tau``: at τ = 1 (the default, the module's) the kernels take y from q (tiles.tau_one,
    forward.forward_tau_one)."""
    x, means = torch.randn(N, D).to(dtype), torch.randn(K, D).to(dtype)
    a, b, v = (t.contiguous() for t in component_terms(torch.zeros(K), torch.full((K,), -math.log(K)), D))
    hard = mode == "hard"
    sms, arch = config.sm_count, config.arch
    config.sm_count = lambda device: SMS
    config.arch = lambda device: f"sm_{cc}" if tuned else None
    try:
        with devtools.record_launches(forward, backward, encode, noise, tiles) as log:
            if mode == "encode":
                encode.gmvq_encode_fwd(x, means, a, b, dot_precision=dot_precision)
                return log
            outs, saved = forward.gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=0, noise=None,
                                           dot_precision=dot_precision)
            grads = dict(quantized=torch.randn(N, D).to(dtype), latent_nll=torch.randn(N),
                         agg_posterior=torch.randn(K))
            backward.gmvq_bwd(x, means, a, b, v, None, saved, grads, tau=tau, hard=hard, seed=0,
                              dot_precision=dot_precision)
    finally:
        config.sm_count, config.arch = sms, arch
    return log


def occupancy(regs, shared, num_warps):
    """Resident CTAs per SM from registers (allocated per warp in units of 256) and shared memory."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = REGS_PER_SM // (per_warp * num_warps)
    by_shared = SHARED_PER_SM // (shared + 1024) if shared else 32
    return max(0, min(by_regs, by_shared, MAX_WARPS // num_warps, 32))


def analyse(launch, cc, cache):
    key = (devtools.variant_key(launch), cc)
    if key not in cache:
        kernel = devtools.compile_launch(launch, cc)
        regs, spills, _, serialized = devtools.resource_usage(kernel)
        cache[key] = dict(kernel=kernel, regs=regs, spill_bytes=spills, shared=kernel.metadata.shared,
                          wgmma_serialized=serialized, sass=devtools.read_sass(kernel))
    return cache[key]


def after_loop_share(launch, K):
    """Iterations of a kernel's loop after its main loop (``devtools.Sass.after``), per main-loop
    iteration: hard mode's dμ kernel walks each row once more, in the code block of its hard code
    (backward.hard_rows), so BLOCK_K/K of the main loop's tiles if the codes are used evenly (a
    codebook whose rows crowd into few codes costs those blocks more). 0 for every other kernel."""
    if launch.name != "_gmvq_bwd_dmu_kernel":
        return 0.0
    return 0.0 if launch.arg("hard_perm_ptr") is None else launch.kwargs["BLOCK_K"] / K


# the forward's lazy rescale (forward.LAZY_LOG2): moves of the reference per program assumed by the model.
# With the benchmark's inputs (testing.make_inputs, log_var 0, τ = 1) a torch replay of the rule saw 1–4
# per program at the anchor rows (benchmarks/README.md); peaked or small-τ posteriors may move it more.
LAZY_MOVES = 8


def skippable_share(launch, K):
    """The share of a kernel's main-loop iterations that run its skippable block (``devtools.Sass.
    skippable``): the forward kernel's lazy rescale, taken on LAZY_MOVES iterations of each program's
    loop (all of them if the loop is shorter). 1.0 for every other kernel (no such block: counted as
    run)."""
    if launch.name != "_gmvq_fwd_kernel":
        return 1.0
    kw = launch.kwargs
    codes = launch.arg("codes_per_split") if kw["SPLIT"] else K
    return min(1.0, LAZY_MOVES / math.ceil(codes / kw["BLOCK_K"]))


def model(info, launch, elems, dot_kind, after_share=0.0, skip_share=1.0):
    """Modelled H200 milliseconds of one launch (see module docstring) and its per-element counts; a
    loop after the main one counts at ``after_share`` iterations per main-loop iteration, the main
    loop's skippable block at ``skip_share``."""
    kw = launch.kwargs
    warps = kw.get("num_warps", 4)
    tile = kw["BLOCK_N"] * kw["BLOCK_K"]
    grid = math.prod(launch.grid)
    sass = info["sass"]
    loops = [(sass, 1.0)] + ([(sass.after, after_share)] if after_share and sass.after is not None else [])
    if sass.skippable is not None and skip_share < 1.0:  # counted in the loop: take out the share skipped
        loops.append((sass.skippable, skip_share - 1.0))
    loop_len = sum(s.loop_len * w for s, w in loops)
    classes = {}
    for s, w in loops:
        for cls, n in s.classes.items():
            classes[cls] = classes.get(cls, 0) + n * w
    per_sm = math.ceil(grid / SMS)
    ctas = occupancy(info["regs"], info["shared"], warps)
    resident = min(ctas, per_sm) * warps
    iters = math.ceil(elems / (grid * tile))
    eff = min(1.0, resident / 8)
    cycles = {"issue": loop_len * warps / 4 / max(eff, 1e-3)}
    for cls, rate in RATES.items():
        cycles[cls] = classes.get(cls, 0) * warps * 32 / rate
    cta_flops = sum(s.mma_flops_per_cta(warps) * w for s, w in loops)  # one loop iteration's tensor-core work
    cycles["tensor"] = cta_flops / TENSOR_FLOPS_PER_CLK[dot_kind]
    bound = max(cycles, key=cycles.get)
    to_ms = per_sm * iters / CLOCK_HZ * 1e3
    # serial: the tensor cores' time added to the other pipes' instead of hidden under them (see the module
    # docstring: the 2026-11-30 H200 timings fit this one better than the overlapped one)
    serial = max(c for name, c in cycles.items() if name != "tensor") + cycles["tensor"]
    per_elem = {cls: n * warps * 32 / tile for cls, n in sorted(classes.items())}
    instr = loop_len * warps * 32 / tile
    flops = cta_flops / tile
    return dict(grid=grid, warps_per_sm=ctas * warps, resident_warps=resident,
                instr_per_elem=instr, classes=per_elem, mma=sass.mma_shapes, tensor_flops_per_elem=flops,
                bound=bound, model_ms=to_ms * cycles[bound], serial_ms=to_ms * serial,
                fit_ms=FIT_FACTOR * fit_terms_ms(instr, flops, elems, dot_kind))


def fit_terms_ms(instr_per_elem, flops_per_elem, elems, dot_kind):
    """fit_ms's two terms, summed (see the module docstring): ``elems`` (n, k) elements' issue slots at 4
    warp-instructions per SM and clock and their tensor-core FLOPs at the peak, over all SMs."""
    issue = instr_per_elem * elems / (32 * 4)
    tensor = flops_per_elem * elems / TENSOR_FLOPS_PER_CLK[dot_kind]
    return (issue + tensor) / (SMS * CLOCK_HZ) * 1e3


def row_flops_per_elem(row):
    """Tensor-core FLOPs per (n, k) element of one report row: ``model``'s, or in a report from before it
    kept them (before 2026-12-04's fit) rebuilt from the main loop's HGMMA shapes."""
    if "tensor_flops_per_elem" in row:
        return row["tensor_flops_per_elem"]
    per_cta = sum(n * devtools.mma_flops(op) for op, n in row["mma"].items() if op.startswith("HGMMA"))
    return per_cta * max(1, row["num_warps"] // 4) / (row["block"][0] * row["block"][1])


def calibrate(times_path, report_path):
    """(factor, rows): FIT_FACTOR refitted from a gpu_check.py run's ``kernel_times`` records and a static
    report (JSON) of the same code: the median of measured / fit_terms_ms over the soft-mode kernels the
    report has at the run's shapes that took ≥ FIT_MIN_MS; rows (shape, mode, kernel, measured ms, ratio
    to the fit) for every kernel matched, hard mode's and the short ones too. A record without a mode
    (runs before the thirty-seventh session's gpu_check.py, 2026-12-04) is soft."""
    times = {}
    with open(times_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("check") == "kernel_times":
                times[(rec["N"], rec["K"], rec["D"], rec.get("mode", "soft"))] = rec["ms_per_fwd_bwd"]
    with open(report_path) as f:
        report = json.load(f)
    matched = []
    for r in report["rows"]:
        shape = tuple(r["shape"])
        ms = times.get((*shape, r["mode"]), {}).get(r["kernel"])
        if ms is None:
            continue
        terms = fit_terms_ms(r["instr_per_elem"], row_flops_per_elem(r), shape[0] * shape[1],
                             dot_kind(DTYPES.get(r["dtype"], torch.float32), None))  # "fp32-…": tf32's peak
        matched.append((shape, r["mode"], r["kernel"], ms, ms / terms))
    kept = [ratio for _, mode, _, ms, ratio in matched if mode == "soft" and ms >= FIT_MIN_MS]
    if not kept:
        raise SystemExit(f"no kernel time of at least {FIT_MIN_MS} ms matches a soft row of {report_path}")
    factor = statistics.median(kept)
    return factor, [(shape, mode, kernel, ms, ratio / factor) for shape, mode, kernel, ms, ratio in matched]


def dot_kind(dtype, prec):
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32")


def report_case(shape, mode, dtype_name, cc, cache, prec="tf32x3", tuned=True, tau=1.0):
    N, K, D = shape
    dtype = DTYPES[dtype_name]
    rows = []
    for launch in capture(N, K, D, dtype, mode, prec, cc, tuned, tau):
        if "BLOCK_K" not in launch.kwargs:  # tiles.norm_operand's O(N + K) launches: not a pass over N×K
            continue
        info = analyse(launch, cc, cache)
        share, skip = after_loop_share(launch, K), skippable_share(launch, K)
        m = model(info, launch, N * K, dot_kind(dtype, prec), share, skip)
        rows.append(dict(shape=list(shape), mode=mode, dtype=dtype_name if dtype_name != "fp32" else f"fp32-{prec}",
                         arch=f"sm_{cc}", kernel=launch.name, regs=info["regs"],
                         spill_bytes=info["spill_bytes"], wgmma_serialized=info["wgmma_serialized"],
                         shared_bytes=info["shared"],
                         num_warps=launch.kwargs.get("num_warps", 4),
                         block=[launch.kwargs["BLOCK_N"], launch.kwargs["BLOCK_K"]], after_loop_share=share,
                         skippable_share=skip if info["sass"].skippable is not None else None, **m))
    total = dict(shape=list(shape), mode=mode, dtype=rows[0]["dtype"], arch=f"sm_{cc}", passes=len(rows),
                 instr_per_elem=sum(r["instr_per_elem"] for r in rows),
                 mufu_per_elem=sum(r["classes"].get("MUFU", 0) for r in rows),
                 model_ms=sum(r["model_ms"] for r in rows), serial_ms=sum(r["serial_ms"] for r in rows),
                 fit_ms=sum(r["fit_ms"] for r in rows))
    return rows, total


# ---------------------------------------------------------------------------------------------------
# Yardstick: FlashAttention-2-style forward and backward (queries x, keys = values = codebook)

@triton.jit
def _fa_fwd_kernel(q_ptr, k_ptr, o_ptr, lse_ptr, N, K, sm_scale,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :])
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kv = tl.load(k_ptr + (k0 + tl.arange(0, BLOCK_K))[:, None] * BLOCK_D + offs_d[None, :])
        qk = tl.dot(q, tl.trans(kv)) * sm_scale
        m_new = tl.maximum(m, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        s = s * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kv.dtype), kv)
        m = m_new
    tl.store(o_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :], (acc / s[:, None]).to(o_ptr.dtype.element_ty))
    tl.store(lse_ptr + offs_n, m + tl.log2(s))


@triton.jit
def _fa_bwd_dkv_kernel(q_ptr, k_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, N, K, sm_scale,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    kv = tl.load(k_ptr + offs_k[:, None] * BLOCK_D + offs_d[None, :])
    dk = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q = tl.load(q_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :])
        do = tl.load(do_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :])
        lse = tl.load(lse_ptr + offs_n)
        delta = tl.load(delta_ptr + offs_n)
        p = tl.exp2(tl.dot(q, tl.trans(kv)) * sm_scale - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(kv))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(dk_ptr + offs_k[:, None] * BLOCK_D + offs_d[None, :], (dk + dv).to(dk_ptr.dtype.element_ty))


@triton.jit
def _fa_bwd_dq_kernel(q_ptr, k_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, N, K, sm_scale,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :])
    do = tl.load(do_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :])
    lse = tl.load(lse_ptr + offs_n)
    delta = tl.load(delta_ptr + offs_n)
    dq = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kv = tl.load(k_ptr + (k0 + tl.arange(0, BLOCK_K))[:, None] * BLOCK_D + offs_d[None, :])
        p = tl.exp2(tl.dot(q, tl.trans(kv)) * sm_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(kv))
        dq += tl.dot((p * (dp - delta[:, None])).to(kv.dtype), kv)
    tl.store(dq_ptr + offs_n[:, None] * BLOCK_D + offs_d[None, :], dq.to(dq_ptr.dtype.element_ty))


def yardstick_launches(N, K, D, dtype):
    """FA2-style launches at (N queries, K keys, D) with the tile sizes FA2's Triton tutorial uses."""
    q, kv = torch.empty(N, D, dtype=dtype), torch.empty(K, D, dtype=dtype)
    vec = torch.empty(N)
    big = D > 128
    # with FMA contraction asked for by name, as every launch of the package (config.FP_FUSION)
    fwd = dict(BLOCK_N=128, BLOCK_K=64 if not big else 32, BLOCK_D=D, num_warps=8, num_stages=3 if not big else 2,
               **config.FP_FUSION)
    bwd = dict(BLOCK_N=64 if not big else 32, BLOCK_K=64, BLOCK_D=D, num_warps=4 if not big else 8,
               num_stages=2 if not big else 1, **config.FP_FUSION)
    return [devtools.Launch(_fa_fwd_kernel, (N // 128,), (q, kv, q, vec, N, K, 1.0), fwd),
            devtools.Launch(_fa_bwd_dkv_kernel, (K // bwd["BLOCK_K"],), (q, kv, q, vec, vec, kv, N, K, 1.0), bwd),
            devtools.Launch(_fa_bwd_dq_kernel, (N // bwd["BLOCK_N"],), (q, kv, q, vec, vec, q, N, K, 1.0), bwd)]


def yardstick(shape, dtype_name, cc, cache):
    N, K, D = shape
    rows = []
    for launch in yardstick_launches(N, K, D, DTYPES[dtype_name]):
        info = analyse(launch, cc, cache)
        m = model(info, launch, N * K, dtype_name if dtype_name != "fp32" else "tf32")
        rows.append(dict(kernel=launch.name, regs=info["regs"], spill_bytes=info["spill_bytes"], **m))
    return dict(shape=list(shape), dtype=dtype_name, arch=f"sm_{cc}", kernels=rows,
                instr_per_elem=sum(r["instr_per_elem"] for r in rows),
                model_ms=sum(r["model_ms"] for r in rows), serial_ms=sum(r["serial_ms"] for r in rows),
                fit_ms=sum(r["fit_ms"] for r in rows))


def noise_launch(num_warps=4):
    """One tile of ``gumbel_noise``'s standalone kernel at its GPU tile (noise.NOISE_BLOCKS), with the
    launch options gumbel_noise passes (config.FP_FUSION)."""
    BLOCK_N, BLOCK_K = noise.NOISE_BLOCKS
    return devtools.Launch(noise._gumbel_noise_kernel, (1, 1),
                           (torch.empty(BLOCK_N, BLOCK_K), BLOCK_N, BLOCK_K, 0, 0, None, 0),
                           dict(FLAT=False, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=num_warps,
                                **config.FP_FUSION))


def noise_cost(cc, cache, num_warps=4):
    """The Gumbel noise alone: the standalone kernel of ``gumbel_noise`` at its GPU tile
    (noise.NOISE_BLOCKS, one tile per program, no loop) compiled like the others; instructions per
    element = the whole kernel's per thread over the elements each thread draws. The fused kernels pay
    about this per noise pass, plus the layout change that puts the tile where their dot results are."""
    BLOCK_N, BLOCK_K = noise.NOISE_BLOCKS
    launch = noise_launch(num_warps)
    info = analyse(launch, cc, cache)
    per_thread = BLOCK_N * BLOCK_K / (32 * num_warps)
    classes = {k: v / per_thread for k, v in info["sass"].classes.items()}
    return dict(arch=f"sm_{cc}", regs=info["regs"], spill_bytes=info["spill_bytes"],
                instr_per_elem=info["sass"].loop_len / per_thread, classes=classes)


# ---------------------------------------------------------------------------------------------------

def markdown(result):
    lines = [f"Static cost report, {result['date']}: torch {result['torch']}, triton {result['triton']} (the compiler "
             f"of the SASS read), configs: {result['configs']}.", "",
             "| N, K, D | mode | dtype | kernel | regs | spill B | wgmma | warps/SM | grid | block (N×K), warps | "
             "instr/elem | MUFU/elem | MMA in loop | bound | model ms | serial ms | fit ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mma = ", ".join(f"{op.split('.')[1]}×{n}" for op, n in r["mma"].items()) or "—"
        wgmma = f"serialised {r['wgmma_serialized']}" if r["wgmma_serialized"] else "ok"
        lines.append(f"| {', '.join(map(str, r['shape']))} | {r['mode']} | {r['dtype']} | {r['kernel']} | "
                     f"{r['regs']} | {r['spill_bytes']} | {wgmma} | {r['warps_per_sm']} | {r['grid']} | "
                     f"{r['block'][0]}×{r['block'][1]}, {r['num_warps']} | {r['instr_per_elem']:.1f} | "
                     f"{r['classes'].get('MUFU', 0):.2f} | {mma} | {r['bound']} | {r['model_ms']:.3f} | "
                     f"{r['serial_ms']:.3f} | {r['fit_ms']:.3f} |")
    lines += ["", "| N, K, D | mode | dtype | arch | passes | instr/elem (sum) | MUFU/elem | model ms (fwd+bwd) | "
              "serial ms | fit ms | FA2 yardstick instr/elem | FA2 model ms | FA2 serial ms | FA2 fit ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ys = {(tuple(y["shape"]), y["dtype"], y["arch"]): y for y in result["yardstick"]}
    for t in result["totals"]:
        y = ys.get((tuple(t["shape"]), t["dtype"].split("-")[0], t["arch"]))
        lines.append(f"| {', '.join(map(str, t['shape']))} | {t['mode']} | {t['dtype']} | {t['arch']} | "
                     f"{t['passes']} | {t['instr_per_elem']:.1f} | {t['mufu_per_elem']:.2f} | {t['model_ms']:.2f} | "
                     f"{t['serial_ms']:.2f} | {t['fit_ms']:.2f} | "
                     + (f"{y['instr_per_elem']:.1f} | {y['model_ms']:.2f} | {y['serial_ms']:.2f} | {y['fit_ms']:.2f} |"
                        if y else "— | — | — | — |"))
    for n in result.get("noise", []):
        lines += ["", f"Gumbel noise alone ({n['arch']}, standalone kernel): {n['instr_per_elem']:.2f} instr/elem, "
                  f"{n['regs']} regs, {n['spill_bytes']} B spill; by class: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(n["classes"].items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=None, help="N,K,D;N,K,D (default: the four anchor shapes)")
    p.add_argument("--dtypes", default="bf16", help="comma list of bf16, fp16, fp32 (fp32 reports tf32x3 and tf32)")
    p.add_argument("--modes", default=None,
                   help="soft, hard (one fwd+bwd of the training objective), encode (the tokenizer kernel); "
                        "default all three")
    p.add_argument("--arch", nargs="+", type=int, default=[90])
    p.add_argument("--fast", action="store_true",
                   help=f"shapes {FAST_SHAPES} only, the tables' configs; exit 1 on any spill, a kernel that does "
                        "not fit an SM, or one whose wgmma ptxas serialises")
    p.add_argument("--tables", action="store_true",
                   help="the tables' configs on sm_90 too (what a GPU without config.TUNED entries runs)")
    p.add_argument("--tau", type=float, default=1.0,
                   help="the Gumbel-softmax temperature (default 1, the module's: the kernels take y from q "
                        "there; any other τ takes the sample's own softmax)")
    p.add_argument("--config", action="append", default=[], metavar="KIND=BN,BK,WARPS,STAGES[,MAXNREG]",
                   type=config_option,
                   help="the config of one kind (row, col, colsum, delta, encode) for every D, in place of "
                        "the launchers' choice (config.override), e.g. row=64,32,4,2,168 for a register cap of "
                        "168; repeat for several kinds")
    p.add_argument("--out", help="write JSON here")
    p.add_argument("--md", help="write the markdown tables here")
    p.add_argument("--calibrate", nargs=2, metavar=("TIMES.jsonl", "REPORT.json"),
                   help="fit FIT_FACTOR to a gpu_check.py run's kernel_times and a static report of the same code; "
                        "print it and each kernel's ratio to the fit (nothing compiled)")
    args = p.parse_args(argv)
    if args.calibrate:
        factor, rows = calibrate(*args.calibrate)
        print(f"fit_ms = {factor:.2f} × (issue + tensor) (FIT_FACTOR now {FIT_FACTOR}); soft kernels of at least "
              f"{FIT_MIN_MS} ms fitted\n\n| N, K, D | mode | kernel | measured ms | measured / fit |\n"
              "|---|---|---|---|---|")
        for shape, mode, kernel, ms, ratio in rows:
            fitted = mode == "soft" and ms >= FIT_MIN_MS
            print(f"| {', '.join(map(str, shape))} | {mode} | {kernel} | {ms:.3f}{'' if fitted else ' (not fitted)'} "
                  f"| {ratio:.2f} |")
        return 0
    args.modes = args.modes or "soft,hard,encode"
    shapes = FAST_SHAPES if args.fast else (
        [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")] if args.shapes else ANCHOR_SHAPES)
    with config.override(**dict(args.config)):
        return report(args, shapes)


def config_option(text):
    """--config's (kind, KernelConfig) from "KIND=BN,BK,WARPS,STAGES[,MAXNREG]"."""
    kind, _, values = text.partition("=")
    fields = [int(v) for v in values.split(",")] if values else []
    if kind not in config.TABLES or len(fields) not in (4, 5):
        raise argparse.ArgumentTypeError(f"expected KIND=BN,BK,WARPS,STAGES[,MAXNREG] with KIND one of "
                                         f"{sorted(config.TABLES)}, got {text!r}")
    return kind, config.KC(*fields)


def report(args, shapes):
    """The report of main's arguments at ``shapes`` (printed, written where asked); main's exit code."""
    t0 = time.time()
    cache, rows, totals, yard = {}, [], [], []
    noise_rows = [noise_cost(cc, cache) for cc in args.arch]
    for cc in args.arch:
        for shape in shapes:
            for dtype_name in args.dtypes.split(","):
                precs = ("tf32x3", "tf32") if dtype_name == "fp32" else ("ieee",)
                for prec in precs:
                    for mode in args.modes.split(","):
                        r, t = report_case(shape, mode, dtype_name, cc, cache, prec,
                                           tuned=not (args.fast or args.tables), tau=args.tau)
                        rows += r
                        totals.append(t)
                        print(f"sm_{cc} {shape} {mode} {t['dtype']}: {t['passes']} passes, "
                              f"{t['instr_per_elem']:.1f} instr/elem, model {t['model_ms']:.2f} ms, serial "
                              f"{t['serial_ms']:.2f} ms [{time.time() - t0:.0f} s]", flush=True)
                if cc == 90:
                    yard.append(yardstick(shape, dtype_name, cc, cache))
    configs = "tables" if args.fast or args.tables else "config.TUNED first, config.ARCH_CONFIGS off sm_90"
    result = dict(device_model="NVIDIA H200 (static model, see benchmarks/static_cost.py)",
                  torch=torch.__version__, triton=triton.__version__, date=time.strftime("%Y-%m-%d"),
                  configs=configs + "".join(f"; {kind} {cfg}" for kind, cfg in args.config),
                  tau=args.tau, rows=rows, totals=totals, yardstick=yard, noise=noise_rows)
    md = markdown(result)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    spills = [r for r in rows if r["spill_bytes"]]
    for r in spills:
        print(f"SPILL: {r['kernel']} {r['shape']} {r['mode']} {r['dtype']} {r['arch']}: {r['spill_bytes']} B")
    unfit = [r for r in rows if r["warps_per_sm"] == 0]  # more shared memory or registers than an SM has
    for r in unfit:
        print(f"DOES NOT FIT: {r['kernel']} {r['shape']} {r['mode']} {r['dtype']} {r['arch']}: "
              f"{r['shared_bytes']} B of shared memory, {r['regs']} registers")
    serialized = [r for r in rows if r["wgmma_serialized"]]
    for r in serialized:
        print(f"WGMMA SERIALISED (ptxas {r['wgmma_serialized']}): {r['kernel']} {r['shape']} {r['mode']} {r['dtype']} "
              f"{r['arch']}")
    return 1 if (args.fast and (spills or unfit or serialized)) else 0


if __name__ == "__main__":
    sys.exit(main())
