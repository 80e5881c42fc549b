"""Does a distance dot kept in flight over the elementwise work pay on Hopper? A probe for lever 14 of
benchmarks/README.md, which Triton's ``tl.dot`` cannot express (results/static-2026-12-04-serial/toy.py).

``probe_kernel`` is a row kernel's loop in Gluon (``triton.experimental.gluon``): per tile of BK codes a
distance dot s = x·μᵀ, two logs and an online softmax of s, and acc += p·μ; the logs either as one MUFU
op each, as the kernels' noise takes them (MUFU_LOGS), or as gl.log2's longer FP32 sequence. μ tiles
come by cp.async into a ring of three shared buffers, one tile ahead; the loop takes two tiles per trip.
Three schedules of the next tile's distance dot (SCHEDULES):

- ``waited``: issued after this tile's work and waited on at once, as Triton's kernels do;
- ``in_flight``: an asynchronous warpgroup MMA issued before this tile's work and waited on after it,
  into registers it defines afresh (``use_acc=False``). ptxas moves its HGMMAs down to just before the
  wait (windows of 3–35 instructions on sm_90);
- ``in_flight_carried``: the same, into the registers of the tile just consumed (two loop-carried
  tiles trading roles), zeroed by a ``use_acc`` the compiler cannot fold. Its registers are live
  anyway, and ptxas keeps its HGMMAs in the first part of the tile's work (at D = 128 windows of
  127–788 instructions; at D = 64 in one of the two tiles of a trip only).

The carried form takes more registers, so fewer CTAs fit an SM (8 warps instead of 16 at D = 128):
with the MUFU logs each schedule also runs pinned at 8 warps per SM (a μ ring of more, unused slots:
96 KB of shared memory per CTA), as the real kernels run, so that the timing tells overlap from
occupancy.

    python benchmarks/overlap_probe.py        # CPU: each variant compiled for sm_90; registers, shared
                                              # memory, warps per SM, its loop's HGMMAs, waits and MUFU runs
                                              # by position, and per distance dot where it is issued and
                                              # waited on (results/static-2026-12-04-overlap/toy_gluon.txt)
    python benchmarks/overlap_probe.py --gpu  # CUDA: each variant at two shapes, timed, outputs compared

``benchmarks/gpu_check.py`` runs the GPU half (``overlap_check``). Compiles with triton 3.7.1 and 3.6.0
(the GPU image's); 3.8 not tried.
"""
import argparse
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

# cp.async into shared memory: async_load since triton 3.8 (3.9 removed the old name, 3.6–3.7 have only it)
async_load = getattr(cp, "async_load", None) or cp.async_copy_global_to_shared

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gmvq_kernels import devtools  # noqa: E402

BN, BK = 64, 32
SHAPES = ((65536, 16384, 64), (65536, 16384, 128))  # rows, codes, D for the GPU timing
SIG = {"x_ptr": "*bf16", "mu_ptr": "*bf16", "out_ptr": "*fp32", "K": "i32", "SCHEDULE": "constexpr",
       "MUFU_LOGS": "constexpr", "BN": "constexpr", "BK": "constexpr", "D": "constexpr", "SLOTS": "constexpr"}
PINNED_SHARED = 96 * 1024  # bytes of x tile and μ ring: 2 CTAs of 4 warps per SM, as the real kernels' 8 warps


@gluon.jit
def lg2_mufu(x):
    """log2 on the special-function unit (one MUFU op), as the kernels' noise takes it."""
    return gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def elementwise(s, m, ssum, MUFU_LOGS: gl.constexpr):
    """Stand-in for a row kernel's work on one distance tile: two logs (the noise) and an online softmax.
    MUFU_LOGS: the logs as one MUFU op each, as the kernels' noise takes them; else gl.log2 (a longer
    FP32 sequence: more work to hide the dot under)."""
    u = 1.0 / (2.0 + s * s)
    if MUFU_LOGS:
        t = s * 1.4427 - lg2_mufu(-lg2_mufu(u))
    else:
        t = s * 1.4427 - gl.log2(-gl.log2(u))
    m_new = gl.maximum(m, gl.max(t, axis=1))
    p = gl.exp2(t - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m - m_new)
    return p, alpha, m_new, ssum * alpha + gl.sum(p, axis=1)


SCHEDULES = ("waited", "in_flight", "in_flight_carried")


@gluon.jit
def step(x_s, bufs, mu_ptr, codes, cols, K, k, i, s_cur, spare, m, ssum, acc, fresh, SCHEDULE: gl.constexpr,
         MUFU_LOGS: gl.constexpr, BK: gl.constexpr, D: gl.constexpr, mma_a: gl.constexpr):
    """One tile: s_cur (this tile's distances) through the elementwise work into acc, and the next tile's
    distances, returned with s_cur (the next step's spare registers)."""
    cur = bufs.index(i % 3)
    nxt = bufs.index((i + 1) % 3)
    cp.wait_group(0)
    fence_async_shared()
    # the μ tile after next goes to the third buffer by cp.async one tile ahead: at the top of the step
    # only a wait on that copy group stands before the next distance dot
    offs = k + 2 * BK + codes
    async_load(bufs.index((i + 2) % 3), mu_ptr + gl.expand_dims(offs, 1) * D + gl.expand_dims(cols, 0),
               mask=gl.expand_dims(offs < K, 1))
    cp.commit_group()
    if SCHEDULE == 1:  # in flight, into registers it defines afresh: ptxas issues it late
        tok = warpgroup_mma(x_s, nxt.permute((1, 0)), gl.zeros_like(spare), use_acc=False, is_async=True)
    if SCHEDULE == 2:  # in flight, into the spare tile's registers (live anyway), zeroed by a runtime use_acc
        tok = warpgroup_mma(x_s, nxt.permute((1, 0)), spare, use_acc=fresh, is_async=True)
    p, alpha, m, ssum = elementwise(s_cur, m, ssum, MUFU_LOGS)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, mma_a)), 1)
    p_op = gl.convert_layout(p.to(gl.bfloat16), gl.DotOperandLayout(0, mma_a, 2))
    acc = warpgroup_mma(p_op, cur, acc)
    if SCHEDULE == 0:  # waited on at once
        s_next = warpgroup_mma(x_s, nxt.permute((1, 0)), gl.zeros_like(spare), use_acc=False)
    else:
        s_next = warpgroup_mma_wait(0, deps=[tok])
    return s_next, s_cur, m, ssum, acc


@gluon.jit
def probe_kernel(x_ptr, mu_ptr, out_ptr, K, SCHEDULE: gl.constexpr, MUFU_LOGS: gl.constexpr, BN: gl.constexpr,
                 BK: gl.constexpr, D: gl.constexpr, SLOTS: gl.constexpr):
    """out = softmax-weighted means of BN rows of x over K codes (bf16 in, fp32 out; K a multiple of 2·BK).
    The loop takes two tiles per trip, so that SCHEDULE 2's two distance tiles trade roles without a copy.
    The μ ring uses 3 of its SLOTS; more slots only take shared memory, to pin the CTAs per SM."""
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BK, 16])
    mma_a: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    sh: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if D * 2 >= 128 else D * 2, element_bitwidth=16,
                                            rank=2)
    rows = gl.program_id(0) * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    x = gl.load(x_ptr + gl.expand_dims(rows, 1) * D + gl.expand_dims(cols, 0))
    x_s = gl.allocate_shared_memory(gl.bfloat16, [BN, D], sh, x)
    bufs = gl.allocate_shared_memory(gl.bfloat16, [SLOTS, BK, D], sh)
    codes = gl.arange(0, BK, layout=gl.SliceLayout(1, ld))
    bufs.index(0).store(gl.load(mu_ptr + gl.expand_dims(codes, 1) * D + gl.expand_dims(cols, 0)))
    fence_async_shared()
    spare = gl.zeros([BN, BK], gl.float32, layout=mma_s)
    s_cur = warpgroup_mma(x_s, bufs.index(0).permute((1, 0)), spare, use_acc=False)
    acc = gl.zeros([BN, D], gl.float32, layout=mma_a)
    m = gl.full([BN], -1e30, gl.float32, layout=gl.SliceLayout(1, mma_s))
    ssum = gl.zeros([BN], gl.float32, layout=gl.SliceLayout(1, mma_s))
    fresh = K < 0  # False, but not to the compiler: an immediate would let ptxas sink the dot (SCHEDULE 2)
    async_load(bufs.index(1), mu_ptr + gl.expand_dims(BK + codes, 1) * D + gl.expand_dims(cols, 0),
               mask=gl.expand_dims(BK + codes < K, 1))
    cp.commit_group()
    for k in range(0, K, 2 * BK):
        i = k // BK
        s_cur, spare, m, ssum, acc = step(x_s, bufs, mu_ptr, codes, cols, K, k, i, s_cur, spare, m, ssum, acc, fresh,
                                          SCHEDULE, MUFU_LOGS, BK, D, mma_a)
        s_cur, spare, m, ssum, acc = step(x_s, bufs, mu_ptr, codes, cols, K, k + BK, i + 1, s_cur, spare, m, ssum, acc,
                                          fresh, SCHEDULE, MUFU_LOGS, BK, D, mma_a)
    out = acc / gl.expand_dims(gl.convert_layout(ssum, gl.SliceLayout(1, mma_a)), 1)
    out = gl.convert_layout(out, ld)
    gl.store(out_ptr + gl.expand_dims(rows, 1) * D + gl.expand_dims(cols, 0), out)


def mufu_ops(trace, after=-1, before=float("inf")):
    """MUFU instructions of a loop trace (its "MUFUx<n>" runs) strictly between two positions."""
    return sum(int(w[5:]) for p, w in trace if w.startswith("MUFU") and after < p < before)


def distance_dots(trace, D):
    """Each distance dot of a loop trace (``devtools.loop_trace``): where its D/16 HGMMAs (64 × BK × 16) are
    issued, where it is waited on, the instructions between its last HGMMA and that wait (its window: the
    dot complete or finishing while the warpgroup works on), and the MUFU ops between its first HGMMA and
    the wait."""
    shape, per_dot, dots, issued = f"64x{BK}x16", D // 16, [], []
    for n, (pos, what) in enumerate(trace):
        if what == shape:
            issued.append(pos)
        if len(issued) == per_dot:
            wait = next(p for p, w in trace[n + 1:] if w == "WAIT")
            mufu = mufu_ops(trace, issued[0], wait)
            dots.append(dict(first=issued[0], last=issued[-1], wait=wait, window=wait - issued[-1] - 1, mufu=mufu))
            issued = []
    return dots


def slots(D, pinned):
    """The μ ring's slots: 3, or (pinned) enough that the CTA's shared memory is PINNED_SHARED."""
    return (PINNED_SHARED // 2 - BN * D) // (BK * D) if pinned else 3


def sass_report(D, schedule, mufu_logs, pinned=False):
    """Compile the probe for sm_90 (no GPU needed) and describe its loop (two tiles)."""
    import static_cost  # the occupancy rule of the static report

    src = GluonASTSource(probe_kernel, SIG, {"SCHEDULE": schedule, "MUFU_LOGS": mufu_logs, "BN": BN, "BK": BK, "D": D,
                                             "SLOTS": slots(D, pinned)},
                         {(i,): [["tt.divisibility", 16]] for i in range(4)})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    regs, spills, _, serialised = devtools.resource_usage(kernel)
    length, trace = devtools.loop_trace(kernel)
    return dict(D=D, schedule=SCHEDULES[schedule], mufu_logs=mufu_logs, pinned=pinned, regs=regs, spill_bytes=spills,
                shared=kernel.metadata.shared, warps_per_sm=4 * static_cost.occupancy(regs, kernel.metadata.shared, 4),
                wgmma_serialised=serialised, loop_len=length, dots=distance_dots(trace, D),
                mufu_in_loop=mufu_ops(trace),
                trace=[f"{i}:{what}" for i, what in trace])


def variants():
    """(D, schedule, mufu_logs, pinned) of the CPU report and the GPU timing: every schedule with each
    filler at each D, and with the MUFU logs (the kernels' kind) at 8 warps per SM too."""
    return [(D, schedule, mufu_logs, pinned) for mufu_logs in (0, 1) for D in (64, 128)
            for pinned in ((False, True) if mufu_logs else (False,)) for schedule in range(len(SCHEDULES))]


def gpu_times(shapes=SHAPES, reps=50):
    """Each variant on the current CUDA device: ms (triton.testing.do_bench median), and per shape, filler
    and occupancy the largest difference of an in-flight schedule's output from the waited one's (the same
    math, in the same order)."""
    import torch

    rows = []
    for N, K, D in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(N, D, device="cuda", generator=g).to(torch.bfloat16)
        mu = torch.randn(K, D, device="cuda", generator=g).to(torch.bfloat16)
        groups = {}
        for d, schedule, mufu_logs, pinned in variants():
            if d == D:
                groups.setdefault((mufu_logs, pinned), []).append(schedule)
        for (mufu_logs, pinned), schedules in groups.items():
            outs, ms = [], {}
            for schedule in schedules:
                out = torch.empty(N, D, device="cuda", dtype=torch.float32)
                run = lambda: probe_kernel[(N // BN,)](x, mu, out, K, SCHEDULE=schedule,  # noqa: E731
                                                      MUFU_LOGS=mufu_logs, BN=BN, BK=BK, D=D,
                                                      SLOTS=slots(D, pinned), num_warps=4)
                run()
                torch.cuda.synchronize()
                outs.append(out.clone())
                ms[SCHEDULES[schedule]] = triton.testing.do_bench(run, warmup=10, rep=reps)
            rows.append(dict(N=N, K=K, D=D, mufu_logs=mufu_logs, pinned=pinned, ms=ms,
                             speedup={n: ms["waited"] / t for n, t in ms.items() if n != "waited"},
                             max_abs_diff=max(float((o - outs[0]).abs().max()) for o in outs[1:])))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="time the schedules on the CUDA device")
    args = p.parse_args(argv)
    if args.gpu:
        for row in gpu_times():
            print(json.dumps(row))
        return
    for D, schedule, mufu_logs, pinned in variants():
        print(json.dumps(sass_report(D, schedule, mufu_logs, pinned)))


if __name__ == "__main__":
    main()
