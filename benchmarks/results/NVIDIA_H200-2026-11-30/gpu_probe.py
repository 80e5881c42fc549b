"""One-off GPU probe, run once on 2026-11-30 from the repository root as benchmarks/gpu_probe.py (kept here as
the record of probe.jsonl, host_profile.txt, probe_log.txt; gpu_check.py now holds its host and graph checks):
host overhead breakdown, CUDA-graph replay, the fp16 offset codes, split-K and TUNED A/B."""
import cProfile
import io
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import gmvq_kernels as gk  # noqa: E402
from gmvq_kernels import config  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
dev = torch.device("cuda")
bf16 = torch.bfloat16
t00 = time.time()


def log(r):
    r = dict(r, elapsed_s=round(time.time() - t00, 1))
    print(json.dumps(r), flush=True)
    with open(f"{out}/probe.jsonl", "a") as fh:
        fh.write(json.dumps(r) + "\n")


def guarded(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001
        import traceback
        log(dict(check="error", where=f.__name__, tb=traceback.format_exc()[-1500:]))


x, m, lv = speed.make_inputs(8, 16, 16, bf16, dev, True)
fn = speed.gmvq_loss("triton")


def per_call(f, iters=300):
    for _ in range(10):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e6


@triton.jit
def _noop(p, n, B: tl.constexpr):
    o = tl.arange(0, B)
    tl.store(p + o, tl.load(p + o, mask=o < n) + 1.0, mask=o < n)


def syncs():
    for _ in range(5):
        fn(x, m, lv).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn(x, m, lv).backward()
        res = "none"
    except RuntimeError as e:
        res = str(e)[:400]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    log(dict(check="sync_in_fwd_bwd", result=res))


def calibration():
    buf = torch.zeros(16, device=dev)
    xd, md, lvd = x.detach(), m.detach(), lv.detach()
    us = dict(torch_empty=per_call(lambda: torch.empty(16, device=dev)),
              torch_add=per_call(lambda: buf.add(1.0)),
              triton_noop=per_call(lambda: _noop[(1,)](buf, 16, B=16)),
              sdpa_fwd_bwd=per_call(lambda: speed.sdpa_loss(x, m, lv).backward()),
              reference_fwd_bwd=per_call(lambda: speed.gmvq_loss("reference")(x, m, lv).backward()),
              gmvq_fwd_nograd=per_call(lambda: gk.gmvq(xd, md, lvd, impl="triton", tau=1.0, seed=0)),
              gmvq_fwd_bwd=per_call(lambda: fn(x, m, lv).backward()))
    log(dict(check="host_calibration", us_per_call=us))


def profile():
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        fn(x, m, lv).backward()
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(70)
    with open(f"{out}/host_profile.txt", "w") as fh:
        fh.write(s.getvalue())
    log(dict(check="profile_written"))


def graph():
    N, K, D = 8192, 1024, 64
    xg, mg, lvg = speed.make_inputs(N, K, D, bf16, dev, True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            for t in (xg, mg, lvg):
                t.grad = None
            fn(xg, mg, lvg).backward()
    torch.cuda.current_stream().wait_stream(s)
    eager = [t.grad.clone() for t in (xg, mg, lvg)]
    for t in (xg, mg, lvg):
        t.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(xg, mg, lvg).backward()
    g.replay()
    torch.cuda.synchronize()
    same = all(torch.equal(a, t.grad) for a, t in zip(eager, (xg, mg, lvg)))
    ms_graph = triton.testing.do_bench(g.replay)
    for t in (xg, mg, lvg):
        t.grad = None
    ms_eager = triton.testing.do_bench(lambda: fn(xg, mg, lvg).backward())
    ms_sdpa = triton.testing.do_bench(lambda: speed.sdpa_loss(xg, mg, lvg).backward())
    log(dict(check="cuda_graph", N=N, K=K, D=D, grads_bitwise_equal_eager=same, ms_graph_replay=ms_graph,
             ms_eager=ms_eager, ms_sdpa_eager=ms_sdpa))


def split_ab():
    shapes = [(8192, 4096, 64), (8192, 16384, 64), (8192, 65536, 64), (8192, 262144, 64), (4096, 65536, 64),
              (16384, 65536, 64), (16384, 16384, 64), (8192, 65536, 128), (8192, 262144, 32), (2048, 262144, 32),
              (4096, 16384, 128)]
    default = config.SPLIT_MIN_PAIRS
    for N, K, D in shapes:
        row = dict(check="split_ab", N=N, K=K, D=D)
        cfg = config.row_config(D, bf16, dev)
        row["splits"] = config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, dev, min_pairs=0)[0]
        try:
            for name, pairs in (("ms_never", 2**62), ("ms_always", 0), ("ms_never2", 2**62)):
                config.SPLIT_MIN_PAIRS = pairs
                row[name] = speed.measure("triton", "fwd_bwd", "bf16", N, K, D, dev, quick=True)["ms"]
        finally:
            config.SPLIT_MIN_PAIRS = default
        log(row)


def tuned_ab():
    tuned = dict(config.TUNED)
    for N, K, D in speed.ANCHOR_SHAPES:
        row = dict(check="tuned_ab", N=N, K=K, D=D, tuned_entries=len(tuned))
        try:
            for name, table in (("ms_table", {}), ("ms_tuned", tuned), ("ms_table2", {}), ("ms_tuned2", tuned)):
                config.TUNED = table
                row[name] = speed.measure("triton", "fwd_bwd", "bf16", N, K, D, dev, quick=True)["ms"]
        finally:
            config.TUNED = tuned
        log(row)


def fp16_offset():
    """gpu_check's failing case (1000, 3000, 100) fp16 hard, offset 30: where codes flip, the fp64 margin
    between the top two logits; and whether centring x and μ on the codebook mean removes the flips."""
    from gmvq_kernels import testing
    N, K, D = 1000, 3000, 100
    for dtype in (torch.float16, torch.bfloat16):
        x, mm, lvv, lp = testing.make_inputs(N, K, D, dtype=dtype, prior=True, device=dev, seed=N + K + D,
                                             offset=30.0)
        gt = gk.gmvq_encode(x.double(), mm.double(), lvv.double(), lp.double(), impl="reference")
        r32 = gk.gmvq_encode(x, mm, lvv, lp, impl="reference")
        enc = gk.gmvq_encode(x, mm, lvv, lp, impl="triton")
        c = mm.float().mean(0).to(dtype)
        enc_c = gk.gmvq_encode((x - c).to(dtype), (mm - c).to(dtype), lvv, lp, impl="triton")
        exact_shift = bool(((x - c).to(dtype) + c == x).all() and ((mm - c).to(dtype) + c == mm).all())
        bad = (enc != gt).nonzero().flatten()
        d64 = torch.cdist(x.double(), mm.double()).square()
        a = 0.5 * torch.exp(-lvv.double())
        logits = torch.log_softmax(lp.double(), 0) - 0.5 * D * lvv.double() - d64 * a
        top2 = logits.topk(2, dim=1).values
        margins = (top2[:, 0] - top2[:, 1])
        log(dict(check="offset_codes", dtype=str(dtype), kernel_mismatch=int(bad.numel()),
                 ref_input_precision_mismatch=int((r32 != gt).sum()),
                 centred_kernel_mismatch=int((enc_c != gt).sum()), centring_exact=exact_shift,
                 margins_at_flips=margins[bad].tolist()[:10], margin_quantiles=margins.quantile(
                     torch.tensor([0.001, 0.01, 0.1], device=dev, dtype=torch.float64)).tolist(),
                 a_range=[a.min().item(), a.max().item()]))


log(dict(check="env", **speed.env_info(dev)))
for f in (syncs, calibration, profile, fp16_offset, graph, split_ab, tuned_ab):
    guarded(f)
log(dict(check="done"))
