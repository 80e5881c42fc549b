"""Speed, memory and scaling of the fused GM-VQ op against naive implementations.

Providers: ``triton`` (gmvq_kernels), ``reference`` (eager PyTorch, builds N×K tensors),
``torch_compile`` (torch.compile of the reference, which computes in fp32 whatever the input dtype),
``naive_compile`` (torch.compile of the same math in the input dtype: bf16 products and softmaxes, what
naive code written for bf16 runs, the fair compiled baseline), ``sdpa`` (PyTorch FlashAttention with x as queries
and the codebook as keys and values: the nearest fused kernel, a speed-of-light proxy that computes
less), ``vqtorch`` (vector-quantize-pytorch's VectorQuantize, hard VQ with EMA; only where installed);
``triton_serial`` (ours with
``GMVQ_SERIAL_WGMMA=1``: the loops as before docs/speed_history.md, item 20, their wgmma serialised by ptxas,
timed beside the default to measure what that item gained), ``triton_no_norm_dot`` (ours with
``GMVQ_NORM_DOT=0``: the norms added per element, as before docs/speed_history.md, item 23),
``triton_hard`` (ours with ``hard=True``: the straight-through one-hot sample, docs/speed_history.md, item 24),
``triton_eager_rescale`` (ours with ``GMVQ_LAZY_RESCALE=0``: the forward's y sums rescaled at
every tile, as before docs/speed_history.md, item 25) and ``triton_defer_dq`` (ours with
``GMVQ_DEFER_DQ_128=1``: at D = 128 the dx pass takes Δq and the Δ pass does not run, as at D ≤ 64;
config.defer_dq_max_block_d; ``triton_defer_dq_hard`` the same in hard mode).
Modes: fwd, bwd, fwd_bwd; and encode (the tokenizer path ``gmvq_encode``, codes only, beside
``cdist_argmin``: torch.cdist + argmin, the nearest-mean lookup of a VQ tokenizer). Each row: median and 20/80 % quantiles of ``triton.testing.do_bench`` (CUDA)
or a wall-clock median (CPU smoke), peak memory beyond the inputs, and useful TFLOP/s (12·N·K·D per
forward+backward: 4 forward, 8 backward; 2·N·K·D for encode).

    python benchmarks/speed.py --smoke                       # CPU, seconds (CI)
    python benchmarks/speed.py --cpu-step                    # CPU: module training step vs VectorQuantize
    python benchmarks/speed.py --cpu-step --codebook-size 8192 --unblocked   # ... and the row blocks' effect
    python benchmarks/speed.py --cpu-step --processes 3      # ... each quantizer in its own process
    python benchmarks/speed.py --out benchmarks/results/X/speed.json   # GPU: anchors + sweeps
    python benchmarks/speed.py --targets benchmarks/results/X/speed.json   # the speed targets of a run
"""
import argparse
import json
import os
import sys
import time

import torch

CPU_MODES = ("--cpu-step", "--host-cpu")
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ and not set(CPU_MODES) & set(sys.argv):
    os.environ["TRITON_INTERPRET"] = "1"  # CPU: run the kernels in Triton's interpreter (not for --cpu-step,
    # which measures what a CPU user gets: the reference and the NumPy noise, nor for --host-cpu, which
    # records the launches instead of running them)

import triton  # noqa: E402

import gmvq_kernels as gk  # noqa: E402
from gmvq_kernels import config, cpu_rows, forward, noise, testing  # noqa: E402

ANCHOR_SHAPES = [(8192, 1024, 64), (32768, 8192, 128), (65536, 16384, 256), (8192, 262144, 32)]
K_SWEEP = [(8192, k, 64) for k in (1024, 4096, 16384, 65536, 262144)]
N_SWEEP = [(n, 8192, 64) for n in (2048, 8192, 32768, 131072)]
SMOKE_SHAPES = [(32, 64, 16)]
ENCODE_PROVIDERS = ("triton", "triton_no_norm_dot", "cdist_argmin", "reference")  # no_norm_dot: before item 23
FLOPS_PER = {"fwd": 4, "bwd": 8, "fwd_bwd": 12, "encode": 2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GIB = 2.0**30


def make_inputs(N, K, D, dtype, device, requires_grad):
    """x, means, log_var = 0 (the package's reproducible factory, gmvq_kernels.testing)."""
    return testing.make_inputs(N, K, D, dtype=dtype, device=device, log_var_scale=0.0,
                               requires_grad=requires_grad)[:3]


def objective(out):
    """The training objective a user runs on gmvq's outputs: ALBO terms + a stand-in reconstruction on
    the quantized output."""
    return gk.albo_loss(out) + out.quantized.float().square().mean()


def gmvq_loss(impl, dot_precision=None, seed=0, hard=False):
    """``objective`` of gmvq with this impl (τ = 1)."""
    def loss(x, means, log_var):
        return objective(gk.gmvq(x, means, log_var, impl=impl, tau=1.0, seed=seed, dot_precision=dot_precision,
                                 hard=hard))
    return loss


def naive_loss(x, means, log_var):
    """speed.py's objective on the reference's math computed in the input dtype (no fp32 upcast):
    the compiled baseline a user's own bf16 code would give (the reference itself computes in fp32)."""
    from gmvq_kernels.reference import _reference

    return objective(_reference(x, means, log_var, None, 1.0, False, 0, None, compute_dtype=x.dtype)[0])


def sdpa_loss(x, means, log_var):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        o = torch.nn.functional.scaled_dot_product_attention(x[None, None], means[None, None], means[None, None])
    return o.float().square().mean()


def vqtorch_loss_factory(K, D, device):
    from vector_quantize_pytorch import VectorQuantize

    vq = VectorQuantize(dim=D, codebook_size=K).to(device)

    def loss(x, means, log_var):
        q, _, commit = vq(x[None])
        return q.float().square().mean() + commit.sum()
    return loss


def encode_fn(provider, prec):
    """Tokenizer path (mode "encode"): codes only. ``cdist_argmin`` is the nearest mean by torch.cdist
    (what a VQ tokenizer computes; it ignores variances and prior, so it computes less than ours)."""
    if provider in ("triton", "triton_no_norm_dot"):  # measure() sets the latter's flag
        return lambda x, means, log_var: gk.gmvq_encode(x, means, log_var, impl="triton", dot_precision=prec)
    if provider == "reference":
        return lambda x, means, log_var: gk.gmvq_encode(x, means, log_var, impl="reference")
    if provider == "cdist_argmin":
        return lambda x, means, log_var: torch.cdist(x, means).argmin(1)
    raise ValueError(provider)


def provider_fn(provider, N, K, D, dtype_name, prec, device):
    # measure() sets the variants' flags
    if provider in ("triton", "triton_serial", "triton_no_norm_dot", "triton_eager_rescale", "triton_defer_dq"):
        return gmvq_loss("triton", prec)
    if provider in ("triton_hard", "triton_defer_dq_hard"):
        return gmvq_loss("triton", prec, hard=True)
    if provider == "reference":
        return gmvq_loss("reference")
    if provider == "torch_compile":
        return torch.compile(gmvq_loss("reference"))
    if provider == "naive_compile":
        return torch.compile(naive_loss)
    if provider == "sdpa":
        return sdpa_loss
    if provider == "vqtorch":
        return vqtorch_loss_factory(K, D, device)
    raise ValueError(provider)


def timeit(fn, device, quick):
    if device.type == "cuda":
        ms, lo, hi = triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100,
                                             quantiles=[0.5, 0.2, 0.8])
        return ms, lo, hi
    fn()
    times = []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def measure(provider, mode, dtype_name, N, K, D, device, prec=None, quick=False, warm=False):
    """One row: times and peak memory of ``mode`` for ``provider``; OOM reported as such. "triton_serial"
    runs with GMVQ_SERIAL_WGMMA=1, "triton_no_norm_dot" with GMVQ_NORM_DOT=0, "triton_eager_rescale" with
    GMVQ_LAZY_RESCALE=0, "triton_defer_dq" (and its hard mode "triton_defer_dq_hard") with
    GMVQ_DEFER_DQ_128=1, "triton" with none of them.
    ``warm``: the first call alone (what it compiles), no time."""
    with config.env_flag(config.SERIAL_WGMMA_ENV, provider == "triton_serial"), \
            config.env_flag(config.NORM_DOT_ENV, provider != "triton_no_norm_dot"), \
            config.env_flag(config.LAZY_RESCALE_ENV, provider != "triton_eager_rescale"), \
            config.env_flag(config.DEFER_DQ_128_ENV, provider.startswith("triton_defer_dq")):
        return _measure(provider, mode, dtype_name, N, K, D, device, prec, quick, warm)


def _measure(provider, mode, dtype_name, N, K, D, device, prec, quick, warm):
    dtype = DTYPES[dtype_name]
    row = dict(provider=provider, mode=mode, dtype=dtype_name + (f"-{prec}" if prec else ""), N=N, K=K, D=D)
    try:
        fn = encode_fn(provider, prec) if mode == "encode" else provider_fn(provider, N, K, D, dtype_name, prec, device)
        inputs = make_inputs(N, K, D, dtype, device, requires_grad=mode not in ("fwd", "encode"))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        if mode in ("fwd", "encode"):
            def run():
                with torch.no_grad():
                    fn(*inputs)
        elif mode == "bwd":
            loss = fn(*inputs)

            def run():
                loss.backward(retain_graph=True)
        else:
            def run():
                fn(*inputs).backward()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
            row["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / GIB
        else:
            row["peak_gib"] = None
        if warm:
            return row
        ms, lo, hi = timeit(run, device, quick)
        row.update(ms=ms, ms_p20=lo, ms_p80=hi, tflops=FLOPS_PER[mode] * N * K * D / (ms * 1e-3) / 1e12)
    except torch.cuda.OutOfMemoryError:
        row.update(ms=None, ms_p20=None, ms_p80=None, peak_gib=None, tflops=None, status="OOM")
    except Exception as e:  # a provider that fails is reported, not dropped
        row.update(ms=None, ms_p20=None, ms_p80=None, peak_gib=None, tflops=None,
                   status=f"error: {type(e).__name__}: {str(e)[:200]}")
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def matmul_ceilings(device):
    """Measured dense matmul rates (TFLOP/s) on this device: bf16 and tf32."""
    if device.type != "cuda":
        return {}
    out = {}
    n = 8192
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=100)
        torch.backends.cuda.matmul.allow_tf32 = old
        out[name] = 2 * n**3 / (ms * 1e-3) / 1e12
    return out


def env_info(device):
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu (Triton interpreter)" if config.INTERPRET else "cpu")
    info = dict(device=name, torch=torch.__version__, triton=triton.__version__, date=time.strftime("%Y-%m-%d"))
    if device.type == "cpu" and not config.INTERPRET:  # the CPU noise's rounds and impl="torch"'s row passes:
        info["c_philox"] = noise.c_philox() is not None  # C where built (noise.c_philox, cpu_rows.rows_library)
        info["c_rows"] = cpu_rows.rows_library() is not None
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # torch's kernels (ATEN_CPU_CAPABILITY)
    return info


def print_table(rows, info, file=sys.stdout):
    print(f"# {info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}", file=file)
    print(f"{'provider':>14} {'mode':>8} {'dtype':>12} {'N':>7} {'K':>7} {'D':>4} {'ms':>9} {'p20':>9} "
          f"{'p80':>9} {'GiB':>8} {'TFLOP/s':>8}", file=file)
    for r in rows:
        f = lambda v, fmt: ("-" if v is None else format(v, fmt))  # noqa: E731
        print(f"{r['provider']:>14} {r['mode']:>8} {r['dtype']:>12} {r['N']:>7} {r['K']:>7} {r['D']:>4} "
              f"{f(r.get('ms'), '9.3f')} {f(r.get('ms_p20'), '9.3f')} {f(r.get('ms_p80'), '9.3f')} "
              f"{f(r.get('peak_gib'), '8.3f')} {f(r.get('tflops'), '8.1f')} {r.get('status', '')}", file=file)


# The speed targets (README, "Speed"), bf16 fwd+bwd of the training objective at the anchor rows: at most
# 1.5× SDPA-flash's time at every row (the standing goal), at least 2× faster than the compiled naive code
# at rows 2 and 3 (naive_compile, the fair baseline; torch_compile of the fp32 reference beside it), and
# row 1 eager within 0.8 ms, row 4 within 40 ms. (name, row index, numerator, denominator, bound, "<=" or
# ">="): the value is numerator's ms over denominator's (None: the ms itself).
TARGETS = [*(("fwd+bwd / SDPA-flash", i, "triton", "sdpa", 1.5, "<=") for i in range(len(ANCHOR_SHAPES))),
           *((f"{base} / fwd+bwd", i, base, "triton", 2.0, ">=") for i in (1, 2)
             for base in ("naive_compile", "torch_compile")),
           ("fwd+bwd ms (eager)", 0, "triton", None, 0.8, "<="),
           ("fwd+bwd ms", 3, "triton", None, 40.0, "<=")]


def speed_targets(rows):
    """TARGETS read from a full run's rows (its anchor rows: sweep rows left out), one dict each: the
    target, the shape, the value, the bound and "met", "missed" or "not measured" (a row missing or
    failed)."""
    def ms(provider, shape):
        return next((r["ms"] for r in rows if r.get("ms") and "sweep" not in r and r["mode"] == "fwd_bwd"
                     and r["dtype"] == "bf16" and r["provider"] == provider and (r["N"], r["K"], r["D"]) == shape),
                    None)

    out = []
    for name, i, num, den, bound, op in TARGETS:
        shape = ANCHOR_SHAPES[i]
        a, b = ms(num, shape), (ms(den, shape) if den else 1.0)
        value = None if a is None or b is None else a / b
        status = "not measured" if value is None else ("met" if (value <= bound if op == "<=" else value >= bound)
                                                       else "missed")
        out.append(dict(target=name, shape=list(shape), value=value, bound=f"{op} {bound}", status=status))
    return out


def print_targets(targets, file=sys.stdout):
    print("| target | N, K, D | value | bound | status |\n|---|---|---|---|---|", file=file)
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"| {t['target']} | {', '.join(map(str, t['shape']))} | {value} | {t['bound']} | {t['status']} |",
              file=file)


def save(rows, info, out, extra=None):
    rows = [dict(r, **info) for r in rows]
    with open(out, "w") as fh:
        json.dump(dict(rows=rows, targets=speed_targets(rows), **(extra or {})), fh, indent=1)
    csv = os.path.splitext(out)[0] + ".csv"
    keys = ["provider", "mode", "dtype", "N", "K", "D", "ms", "ms_p20", "ms_p80", "peak_gib", "tflops", "status",
            "device", "torch", "triton", "date"]
    with open(csv, "w") as fh:
        fh.write(",".join(keys) + "\n")
        for r in rows:
            fh.write(",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + "\n")


def plot_scaling(rows, out_png, title):
    """Time and memory against K (fixed N, D) and against N (fixed K, D), log axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (axis, fixed) in enumerate((("K", ("N", 8192)), ("N", ("K", 8192)))):
        sel = [r for r in rows if r.get("sweep") == axis and r["mode"] == "fwd_bwd"]
        for key in sorted({(r["provider"], r["dtype"]) for r in sel}):
            pts = sorted((r[axis], r["ms"], r["peak_gib"]) for r in sel
                         if (r["provider"], r["dtype"]) == key and r["ms"] is not None)
            if not pts:
                continue
            xs, ms, gib = zip(*pts)
            axes[0][col].plot(xs, ms, "o-", label=f"{key[0]} {key[1]}")
            mem = [(x_, g_) for x_, g_ in zip(xs, gib) if g_]
            if mem:
                axes[1][col].plot(*zip(*mem), "o-", label=f"{key[0]} {key[1]}")
        for row, ylabel in ((0, "fwd+bwd ms"), (1, "peak GiB beyond inputs")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            if ax.lines:
                ax.set_yscale("log")
            ax.set_xlabel(f"{axis} ({fixed[0]}={fixed[1]}, D=64)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def host_path_cpu(iters=300):
    """Host work of one fwd+bwd of the kernel path at (8, 16, 16) bf16 on this CPU, with the kernel
    launches recorded instead of run (devtools.host_path_on_cpu): Python, dispatcher and torch ops, not
    Triton's launch cost. Median µs over ``iters`` calls. Then, by kernel, the part of Triton's launch
    cost a CPU can time (``devtools.bind_cost_us``: argument binding, specialisation, cache key); and
    the same for one ``gmvq_encode`` call ("encode": launches, µs, torch ops)."""
    from gmvq_kernels import devtools

    x, means, log_var = make_inputs(8, 16, 16, torch.bfloat16, torch.device("cpu"), True)
    fn = gmvq_loss("triton")
    times = []
    with devtools.host_path_on_cpu() as log:
        for i in range(iters + 20):
            t0 = time.perf_counter()
            fn(x, means, log_var).backward()
            times.append(time.perf_counter() - t0)
            if i == 0:
                first = list(log)  # one fwd+bwd's launches
        ops = torch_ops(lambda: fn(x, means, log_var).backward())
        # the tokenizer path at the same shape: one gmvq_encode call
        enc_times = []
        for i in range(iters + 20):
            del log[:]
            t0 = time.perf_counter()
            gk.gmvq_encode(x, means, log_var)
            enc_times.append(time.perf_counter() - t0)
        enc_launches = len(log)
        enc_ops = torch_ops(lambda: gk.gmvq_encode(x, means, log_var))
    bind = {}  # by kernel, summed over its launches
    for launch in first:
        bind[launch.name] = round(bind.get(launch.name, 0.0) + devtools.bind_cost_us(launch), 1)
    times, enc_times = sorted(times[20:]), sorted(enc_times[20:])
    return dict(check="host_path_cpu", N=8, K=16, D=16, launches_per_fwd_bwd=len(first),
                us_median=times[len(times) // 2] * 1e6, us_min=times[0] * 1e6, threads=torch.get_num_threads(),
                torch_ops_per_fwd_bwd=ops, triton_bind_us=bind, triton_bind_us_per_fwd_bwd=sum(bind.values()),
                encode=dict(launches=enc_launches, us_median=enc_times[len(enc_times) // 2] * 1e6,
                            us_min=enc_times[0] * 1e6, torch_ops=enc_ops))


def torch_ops(fn):
    """The torch ops one call of ``fn`` dispatches, by name (torch.profiler; ops that other ops call
    inside them not counted): on a GPU each costs host time, ~13 µs per launching op on the H200's host
    (gpu_check.py's calibration, 2026-11-30)."""
    from collections import Counter

    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")
              and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return dict(Counter(e.name[len("aten::"):] for e in events).most_common())


def cpu_training_step(steps=40, dim=32, codebook_size=512, batch=(64, 32, 4, 4), compiled=True, unblocked=False,
                      only=None):
    """One training step of the quantizer alone on CPU (forward, the quantizer's loss plus a stand-in
    reconstruction, backward, Adam), GaussianMixtureVQ with ``impl="auto"`` (what a CPU user gets:
    "torch", its C passes as custom ops under torch.compile) beside vector-quantize-pytorch's
    VectorQuantize when installed, each eager and (``compiled``) under torch.compile, and GM-VQ eager
    with ``impl="reference"`` (autograd through the ground truth: what "torch" replaces); median ms over
    interleaved steps, ratios like for like (eager to eager, compiled to compiled) and compiled GM-VQ to
    eager VectorQuantize, GM-VQ eager with the noise's NumPy fallback (``GMVQ_C_PHILOX=0``: NumPy's
    Philox rounds and logs, what the C twin saves) and with impl="torch"'s row passes in torch ops
    (``GMVQ_C_ROWS=0``: what the C row passes save). The first step's seconds include the compile.
    ``unblocked``: also GM-VQ eager with the whole batch as one row block (config.reference_rows),
    interleaved with the rest. ``only``: the (quantizer, mode) keys to run (``cpu_step_processes`` runs
    each in a process of its own). Each row also counts the page faults of a step (median): glibc
    returns freed memory to the system and faults it back in, and how often depends on what else the
    process allocates (see benchmarks/README.md, "The CPU training step")."""
    import resource
    torch.manual_seed(0)
    latents = torch.randn(*batch)
    gmvq = lambda impl: lambda: gk.GaussianMixtureVQ(dim, codebook_size, seed=0, impl=impl,  # noqa: E731
                                                     accept_image_fmap=True)
    makers = {"gmvq_kernels": gmvq("auto"), "gmvq_kernels_numpy_rounds": gmvq("auto"),
              "gmvq_kernels_torch_rows": gmvq("auto"), "gmvq_kernels_reference": gmvq("reference")}
    try:
        from vector_quantize_pytorch import VectorQuantize
        makers["vector_quantize_pytorch"] = lambda: VectorQuantize(dim=dim, codebook_size=codebook_size,
                                                                   accept_image_fmap=True)
    except ImportError:
        pass
    quantizers, opts = {}, {}
    modes = ("eager", "compiled") if compiled else ("eager",)
    variants = [(name, mode) for name in makers for mode in modes
                if mode == "eager" or not name.endswith(("reference", "numpy_rounds", "torch_rows"))]
    if unblocked:
        makers["gmvq_kernels_unblocked"] = makers["gmvq_kernels"]
        variants.append(("gmvq_kernels_unblocked", "eager"))
    if only is not None:
        variants = [key for key in variants if key in only]
    block_elems = config.REFERENCE_BLOCK_ELEMS, config.EAGER_C_BLOCK_ELEMS
    for name, mode in variants:
        q = makers[name]()
        # VectorQuantize's EMA codebook has no trainable parameters: its optimiser step is a no-op
        if any(True for _ in q.parameters()):
            opts[name, mode] = torch.optim.Adam(q.parameters(), lr=1e-3)
        quantizers[name, mode] = torch.compile(q) if mode == "compiled" else q

    faults = {key: [] for key in variants}

    def step(key):
        config.REFERENCE_BLOCK_ELEMS, config.EAGER_C_BLOCK_ELEMS = (2 ** 62,) * 2 if key[0].endswith("unblocked") \
            else block_elems
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with config.env_flag(noise.C_PHILOX_ENV, not key[0].endswith("numpy_rounds")), \
                config.env_flag(cpu_rows.C_ROWS_ENV, not key[0].endswith("torch_rows")):
            t0 = time.perf_counter()
            z = latents.clone().requires_grad_(True)
            quantized, _, loss = quantizers[key](z)[:3]
            (quantized.square().mean() + loss.sum()).backward()
            if key in opts:
                opts[key].step()
                opts[key].zero_grad()
            t = (time.perf_counter() - t0) * 1e3
        faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return t

    times = {}
    for key in list(quantizers):
        try:  # the first step compiles: torch.compile on a CPU needs a C++ compiler
            times[key] = [step(key)]
        except Exception as e:  # noqa: BLE001 - reported, and the other variants still run
            print(f"{key}: skipped, its first step failed: {type(e).__name__}: {str(e)[:200]}")
    for _ in range(steps + 1):
        for key in times:
            times[key].append(step(key))
    config.REFERENCE_BLOCK_ELEMS, config.EAGER_C_BLOCK_ELEMS = block_elems
    rows = {}
    for (name, mode), ts in times.items():
        first, ts = ts[0], sorted(ts[2:])
        rows[name, mode] = dict(check="cpu_training_step", quantizer=name, mode=mode, dim=dim,
                                codebook_size=codebook_size, batch=list(batch), ms_median=ts[len(ts) // 2],
                                ms_min=ts[0], first_step_s=first / 1e3, threads=torch.get_num_threads(),
                                page_faults_per_step=sorted(faults[name, mode][2:])[len(ts) // 2])
    return list(step_ratios(rows).values())


def step_ratios(rows):
    """``rows`` ({(quantizer, mode): row}) with the ratios of ``cpu_training_step`` added."""
    vqp = "vector_quantize_pytorch"
    for other in ("unblocked", "reference", "numpy_rounds", "torch_rows"):
        if (f"gmvq_kernels_{other}", "eager") in rows and ("gmvq_kernels", "eager") in rows:
            rows["gmvq_kernels", "eager"][f"ratio_to_{other}"] = (
                rows["gmvq_kernels", "eager"]["ms_median"] / rows[f"gmvq_kernels_{other}", "eager"]["ms_median"])
    for mode in ("eager", "compiled"):
        if ("gmvq_kernels", mode) in rows and (vqp, mode) in rows:
            rows["gmvq_kernels", mode]["ratio_to_vector_quantize_pytorch"] = (
                rows["gmvq_kernels", mode]["ms_median"] / rows[vqp, mode]["ms_median"])
    if ("gmvq_kernels", "compiled") in rows and (vqp, "eager") in rows:
        rows["gmvq_kernels", "compiled"]["ratio_to_eager_vector_quantize_pytorch"] = (
            rows["gmvq_kernels", "compiled"]["ms_median"] / rows[vqp, "eager"]["ms_median"])
    return rows


def cpu_step_processes(rounds=3, codebook_size=512):
    """``cpu_training_step`` with each (quantizer, mode) alone in a process of its own, the processes
    run one after another, ``rounds`` times over: each quantizer then meets only its own allocations.
    Per variant the median over rounds of each process's median (``round_ms``: every round's)."""
    import subprocess

    keys = [("gmvq_kernels", "eager"), ("gmvq_kernels_numpy_rounds", "eager"), ("gmvq_kernels_torch_rows", "eager"),
            ("gmvq_kernels_reference", "eager"),
            ("vector_quantize_pytorch", "eager"),
            ("gmvq_kernels", "compiled"), ("vector_quantize_pytorch", "compiled")]
    runs = {}
    for _ in range(rounds):
        for name, mode in keys:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cpu-step", "--only", f"{name}:{mode}",
                                   "--codebook-size", str(codebook_size)], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    runs.setdefault((row["quantizer"], row["mode"]), []).append(row)
    rows = {}
    for key, got in runs.items():
        ms = sorted(r["ms_median"] for r in got)
        rows[key] = dict(got[0], ms_median=ms[len(ms) // 2], ms_min=min(r["ms_min"] for r in got),
                         round_ms=[r["ms_median"] for r in got], processes=len(got),
                         page_faults_per_step=sorted(r["page_faults_per_step"] for r in got)[len(got) // 2])
    return list(step_ratios(rows).values())


def run_smoke(args):
    device = torch.device("cpu")
    rows = []
    for (N, K, D) in SMOKE_SHAPES:
        for provider in ("reference", "torch_compile", "naive_compile", "triton"):
            for mode in ("fwd", "fwd_bwd"):
                rows.append(measure(provider, mode, "fp32", N, K, D, device, quick=True,
                                    prec="ieee" if provider == "triton" else None))
        for provider in ("triton_serial", "triton_no_norm_dot", "triton_hard", "triton_eager_rescale", "triton_defer_dq"):
            rows.append(measure(provider, "fwd_bwd", "bf16", N, K, D, device, quick=True))
        for provider in ENCODE_PROVIDERS:
            rows.append(measure(provider, "encode", "fp32", N, K, D, device, quick=True,
                                prec="ieee" if provider == "triton" else None))
    return rows


# fp32 dot precisions measured per anchor row (each is a separate kernel compile: the GPU check must
# stay within minutes); bf16 everywhere. tf32x3, fp32's default, at row 2 too since it is spelled out in
# the kernels (docs/speed_history.md, item 35: untimed until then beyond row 1, which is host-bound).
FP32_PRECS = {0: ["tf32x3", "tf32"], 1: ["tf32x3", "tf32"]}


def anchor_cases(i):
    """(provider, mode, dtype name, fp32 dot precision) of the full run's rows at ANCHOR_SHAPES[i], in order."""
    N, K, D = ANCHOR_SHAPES[i]
    cases = [("triton", mode, "bf16", None) for mode in ("fwd", "bwd", "fwd_bwd")]
    cases.append(("triton_serial", "fwd_bwd", "bf16", None))  # before item 20's fix
    cases.append(("triton_no_norm_dot", "fwd_bwd", "bf16", None))  # before item 23
    cases.append(("triton_hard", "fwd_bwd", "bf16", None))  # hard mode (item 24)
    if forward.lazy_rescale_on(torch.bfloat16, False, True, config.block_d(D)):  # its rescale at every tile
        cases.append(("triton_eager_rescale", "fwd_bwd", "bf16", None))
    if config.block_d(D) == 128:  # dx takes Δq there too (config.defer_dq_max_block_d), soft and hard
        cases += [("triton_defer_dq", "fwd_bwd", "bf16", None), ("triton_defer_dq_hard", "fwd_bwd", "bf16", None)]
    cases += [("triton", "fwd_bwd", "fp32", prec) for prec in FP32_PRECS.get(i, [])]
    cases += [("sdpa", "fwd_bwd", "bf16", None), ("reference", "fwd_bwd", "bf16", None),
              ("reference", "fwd_bwd", "fp32", None)]
    if i in (1, 2):  # compiled baselines at rows 2-3, whatever the budget: the speed targets name them
        cases += [(provider, "fwd_bwd", "bf16", None) for provider in ("torch_compile", "naive_compile")]
    # the tokenizer path beside a cdist + argmin
    cases += [(provider, "encode", "bf16", None) for provider in ENCODE_PROVIDERS
              if provider != "reference" or N * K <= 2**28]
    return cases


def sweep_shapes():
    """(sweep name, shape) of the full run's sweeps, in order."""
    return [(sweep, shape) for sweep, shapes in (("K", K_SWEEP), ("N", N_SWEEP)) for shape in shapes]


def compiles(provider):
    """Whether ``provider``'s first call compiles (Triton's JIT, or inductor for the compiled baselines)."""
    return provider.startswith("triton") or provider.endswith("_compile")


def warm(device, i=None, which=None):
    """Call once, untimed, each compiling provider (those ``which(provider)`` admits, all if None) of the
    full run at ANCHOR_SHAPES[i] (the sweeps for None): their compiled kernels and inductor's graphs land
    in the on-disk caches, so a later run in another process spends its time on measuring (gpu_check.py's
    warm steps run beside its checks). Returns the rows of the calls that failed."""
    if i is None:
        rows = [measure("triton", "fwd_bwd", "bf16", N, K, D, device, warm=True) for _, (N, K, D) in sweep_shapes()]
    else:
        rows = [measure(provider, mode, dtype_name, *ANCHOR_SHAPES[i], device, prec=prec, warm=True)
                for provider, mode, dtype_name, prec in anchor_cases(i)
                if compiles(provider) and (which is None or which(provider))]
    return [r for r in rows if "status" in r]


def run_full(args, device, deadline, checkpoint=None):
    rows = []
    for i, (N, K, D) in enumerate(ANCHOR_SHAPES):
        for provider, mode, dtype_name, prec in anchor_cases(i):
            rows.append(measure(provider, mode, dtype_name, N, K, D, device, prec=prec))
        print_table([r for r in rows if (r["N"], r["K"], r["D"]) == (N, K, D)], env_info(device))
        if checkpoint:
            checkpoint(rows)
    for sweep, (N, K, D) in sweep_shapes():
        if time.time() > deadline:
            break
        for provider in ("triton", "reference"):
            if provider == "reference" and N * K > 2**31:
                continue
            r = measure(provider, "fwd_bwd", "bf16", N, K, D, device, quick=True)
            r["sweep"] = sweep
            rows.append(r)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter), seconds")
    p.add_argument("--out", help="write rows as JSON (and .csv beside it; plots with --plot)")
    p.add_argument("--plot", help="PNG path for the scaling plot")
    p.add_argument("--budget-s", type=float, default=300, help="skip optional parts after this many seconds")
    p.add_argument("--cpu-step", action="store_true",
                   help="CPU: one training step of GaussianMixtureVQ beside VectorQuantize (if installed)")
    p.add_argument("--host-cpu", action="store_true",
                   help="CPU: host work of one fwd+bwd of the kernel path, launches recorded, not run")
    p.add_argument("--codebook-size", type=int, default=512, help="--cpu-step: K (default 512)")
    p.add_argument("--unblocked", action="store_true",
                   help="--cpu-step: also GM-VQ eager with the batch as one row block (config.reference_rows)")
    p.add_argument("--processes", type=int, default=0, metavar="ROUNDS",
                   help="--cpu-step: each quantizer and mode in a process of its own, ROUNDS rounds")
    p.add_argument("--only", help="--cpu-step: one variant, QUANTIZER:MODE (what --processes runs)")
    p.add_argument("--targets", metavar="SPEED_JSON",
                   help="print the speed targets read from a full run's speed.json (any machine), and exit")
    args = p.parse_args(argv)
    if args.targets:
        with open(args.targets) as fh:
            print_targets(speed_targets(json.load(fh)["rows"]))
        return 0
    if args.cpu_step or args.host_cpu:
        if not args.cpu_step:
            rows = [host_path_cpu()]
        elif args.processes:
            rows = cpu_step_processes(args.processes, codebook_size=args.codebook_size)
        else:
            only = None if args.only is None else {tuple(args.only.split(":"))}
            rows = cpu_training_step(codebook_size=args.codebook_size, unblocked=args.unblocked, only=only)
        for r in rows:
            print(json.dumps(r))
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(dict(rows=rows, **env_info(torch.device("cpu"))), fh, indent=1)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    info = env_info(device)
    t0 = time.time()
    full = device.type == "cuda"  # the anchor rows and sweeps; a CPU (or --smoke) runs the smoke shapes
    if not full:
        rows = run_smoke(args)
        extra = {}
    else:
        ceilings = matmul_ceilings(device)
        print(f"matmul ceilings (TFLOP/s): {ceilings}")
        extra = dict(ceilings=ceilings)
        checkpoint = (lambda rows: save(rows, info, args.out, extra)) if args.out else None
        rows = run_full(args, device, t0 + args.budget_s, checkpoint)
    print_table(rows, info)
    if full:
        print_targets(speed_targets(rows))
    if args.out:
        save(rows, info, args.out, extra)
    if args.plot:
        plot_scaling(rows, args.plot, f"GM-VQ fwd+bwd scaling — {info['device']}")
    bad = [r for r in rows if r.get("status", "").startswith("error")]
    return 1 if args.smoke and bad else 0


if __name__ == "__main__":
    sys.exit(main())
