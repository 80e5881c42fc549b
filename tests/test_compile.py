"""Every kernel variant compiles for real GPU targets (sm_80, sm_86, sm_90), and the static cost report's fast
mode finds no spill — without a GPU (docs/design.md §6)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_kernels_compile_for_sm80_and_sm90():
    # 327 builds since the backward's τ = 1 variants (docs/speed_history.md, item 27): 14.5 minutes with a
    # cold cache in two processes on a 2-core machine that was running the suite beside it (2026-12-04);
    # 347 with the forward's (item 28)
    script = Path(__file__).with_name("compile_kernels.py")
    proc = subprocess.run([sys.executable, str(script), "80", "90"], env=ENV, capture_output=True, text=True,
                          timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failed" in proc.stdout and "compiled" in proc.stdout, proc.stdout


def test_kernels_fit_99_kib_gpus():
    """sm_86 (the RTX 30 series, A10; sm_89 and sm_120 parts have the same 99 KiB per block): every variant,
    with config.SMALL_SHARED_CONFIGS where a bucket has one, fits that shared memory."""
    script = Path(__file__).with_name("compile_kernels.py")
    proc = subprocess.run([sys.executable, str(script), "86"], env=ENV, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failed" in proc.stdout and "compiled" in proc.stdout, proc.stdout


def test_static_tools_compile_with_fma_contraction():
    """The launches the static tools build by hand (static_cost's FlashAttention-style yardstick and its
    noise tile, compile_kernels' noise launches) and those they record from the launchers ask for FMA
    contraction (config.FP_FUSION) as every launch of the package does: triton 3.10 stops contracting by
    default, and a yardstick compiled without it would be measured against kernels compiled with it."""
    code = ("import sys, torch; sys.path[:0] = ['benchmarks', 'tests']; import static_cost, compile_kernels; "
            "launches = [*static_cost.yardstick_launches(256, 256, 64, torch.bfloat16), "
            "*static_cost.yardstick_launches(256, 256, 256, torch.bfloat16), static_cost.noise_launch(), "
            "*compile_kernels.record('sm_90')]; "
            "print(len(launches), sorted({l.name for l in launches if l.kwargs.get('enable_fp_fusion') is not True}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    count, missing = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) > 300 and missing == "[]", proc.stdout[-2000:]  # 379 launches on 2026-12-06 (49th session)


TMA_LOOP = """
import torch, triton, triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from gmvq_kernels import devtools


@triton.jit
def tma_loop(x_desc, out_ptr, N, BLOCK: tl.constexpr, D: tl.constexpr):
    acc = tl.zeros((BLOCK, D), tl.float32)
    for n in range(0, N, BLOCK):
        acc += x_desc.load([n, 0]).to(tl.float32)
    tl.store(out_ptr + tl.arange(0, BLOCK)[:, None] * D + tl.arange(0, D)[None, :], acc)


x = torch.zeros(256, 64, dtype=torch.bfloat16)
launch = devtools.Launch(tma_loop, (1,), (TensorDescriptor.from_tensor(x, [32, 64]), torch.zeros(32, 64), 256),
                         dict(BLOCK=32, D=64))
instrs, labels, loops = devtools.disassemble(devtools.compile_launch(launch, 90))
last_exit = max(a for a, op, _ in instrs if op.startswith("EXIT"))
back = [a for a, op, o in instrs if op.startswith("BRA") and a > last_exit and labels[o.split("(")[1].split(")")[0]] < a
        and labels[o.split("(")[1].split(")")[0]] < last_exit]
print(len(back), len(loops), max(hi for _, hi in loops) < last_exit)
"""


def test_loop_finder_leaves_out_blocks_after_exit(tmp_path):
    """The static report's main loop (devtools.disassemble) ignores branches placed after the kernel's
    last EXIT: with pipelined TMA loads, the mbarrier waits' retry blocks sit there and jump back into
    the body, and the largest backward branch then took the epilogue into the loop (benchmarks/README.md,
    the fifty-second session)."""
    script = tmp_path / "tma_loop.py"  # triton reads a kernel's source from its file
    script.write_text(TMA_LOOP)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    back, loops, inside = proc.stdout.split()[-3:]
    assert int(back) > 0, "no block after EXIT jumps back: the case this test is for did not arise"
    assert int(loops) == 1 and inside == "True", proc.stdout


# Spills that a triton other than CI's (3.7) is known to compile into --fast's kernels, by (major, minor):
# (kernel, shape, mode) -> bytes. triton 3.6.0, what the H200 image runs: hard dμ at D = 128 (1.0 local
# loads/stores per element in its loop; the spill-free (16, 128, 8, 2) tile models 3–6 % slower per
# fwd+bwd there, so the table keeps its tile; README, "Speed"): 168 B, 184 B since the report's τ = 1
# takes y from q (docs/speed_history.md, item 27), 128 B since dμ forms Y before that sample (item 31;
# checked on a CPU 2026-12-04), 80 B since it draws the noise after Y at BLOCK_D = 128 too (item 33); 144 B
# from 2026-12-05 06:55 to the forty-second session, whose tiles.code_index put the code tiles' pointer
# back in one expression (a helper that returned ptr + offs_k·W, the caller adding offs_d, cost 64 B); 48 B
# since the column kernels address their row tiles from one base per block (tiles.load_block, 2026-12-06);
# none since dμ takes its rows' values from the dx kernel's records (tiles.load_row_record, 2026-12-06).
# Any compiler's spill here fails the test until it is recorded.
KNOWN_SPILLS = {}


def test_static_cost_fast_mode_has_no_spills(tmp_path):
    """benchmarks/static_cost.py --fast: three small shapes (one splits the codebook, one at D = 128), bf16, soft
    and hard (every kernel of one fwd+bwd) and the encode kernel, compiled for sm_90 and read from SASS; it
    exits 1 on any spill or serialised wgmma. With CI's triton none; with another, exactly KNOWN_SPILLS'."""
    import triton

    from gmvq_kernels.config import _version
    known = KNOWN_SPILLS.get(_version(triton.__version__), {})
    out = tmp_path / "static.json"
    proc = subprocess.run([sys.executable, "benchmarks/static_cost.py", "--fast", "--out", str(out)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == (1 if known else 0), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    spills = {(r["kernel"], tuple(r["shape"]), r["mode"]): r["spill_bytes"] for r in report["rows"] if r["spill_bytes"]}
    assert spills == known, spills
    kernels = {r["kernel"] for r in report["rows"]}
    assert kernels == {"_gmvq_fwd_kernel", "_gmvq_fwd_colsum_kernel", "_gmvq_bwd_delta_kernel",
                       "_gmvq_bwd_dx_kernel", "_gmvq_bwd_dmu_kernel", "_gmvq_encode_kernel"}, kernels
    # half inputs at D = 64: the dx pass takes Δq in both modes (backward.defer_delta_q), so the Δ pass
    # runs at D = 128 only
    assert {r["shape"][2] for r in report["rows"] if r["kernel"] == "_gmvq_bwd_delta_kernel"} == {128}
    for r in report["rows"]:
        assert r["warps_per_sm"] >= 8, r
        # ptxas serialised every wgmma of dx and dμ (and of the split forward at D = 32) until their loops
        # were declared non-empty (tiles.nonempty_range)
        assert not r["wgmma_serialized"], r
        assert r["instr_per_elem"] > 0 and r["model_ms"] > 0, r
        # the tensor cores' time added, not overlapped: never below the overlapped estimate
        assert r["serial_ms"] >= r["model_ms"], r
        if r["kernel"] == "_gmvq_bwd_delta_kernel":
            # bf16 takes Δy from the forward (forward.delta_from_forward): the Δ pass is Δq alone, one
            # exp2 per element and no noise (with the noise: 4 MUFU per element)
            assert r["classes"]["MUFU"] == 1.0, r
        if r["kernel"] in ("_gmvq_bwd_delta_kernel", "_gmvq_encode_kernel"):
            # only the logits: x from shared memory (tiles.row_half_logits), two CTAs per SM (the Δ pass at
            # D = 128 held 192 registers, 8 warps per SM, with a −2x copy of x and Δy's sums in registers)
            assert r["warps_per_sm"] >= 16, r
        if r["kernel"] in ("_gmvq_bwd_dx_kernel", "_gmvq_bwd_dmu_kernel"):
            # the report's τ = 1: y from q (tiles.sample_prob), so q's exp2, u's log and one rcp per element
            # (with the sample's own softmax, as at another τ: 4)
            assert r["classes"]["MUFU"] == 3.0, r
    assert {t["mode"] for t in report["totals"]} == {"soft", "hard", "encode"}
    # hard mode's dμ walks each row once more after its loop (backward.hard_rows) where K has at least
    # config.HARD_ROWS_MIN_BLOCKS code blocks: counted at BLOCK_K/K of the main loop's tiles
    shares = {(r["mode"], r["shape"][1]): r["after_loop_share"] for r in report["rows"]
              if r["kernel"] == "_gmvq_bwd_dmu_kernel"}
    assert shares[("hard", 1024)] == 128 / 1024 and shares[("soft", 1024)] == 0.0, shares
    # the forward's lazy rescale (forward.LAZY_MIN_BLOCK_D): a block its loop skips from D = 128 on, counted
    # at LAZY_MOVES of the 32 tiles of K = 1024; at D = 64 the rescale runs every tile, in the loop
    lazy = {r["shape"][2]: r["skippable_share"] for r in report["rows"]
            if r["kernel"] == "_gmvq_fwd_kernel" and r["shape"][1] == 1024}
    assert lazy == {64: None, 128: 8 / 32}, lazy
    # the target of ≤ 200 thread-instructions per (n, k) element over one fwd+bwd, met at D ≤ 64 in both
    # modes since docs/speed_history.md, item 18 (189.9 / 198.3 soft / hard): a change that gives it up must
    # say so here
    for t in report["totals"]:
        if t["shape"][2] == 64 and t["mode"] != "encode":
            assert t["instr_per_elem"] <= 200, t
    assert report["yardstick"] and report["yardstick"][0]["instr_per_elem"] > 0
    for t in report["totals"] + report["yardstick"]:
        assert t["serial_ms"] >= t["model_ms"] > 0, t
    # fit_ms (static_cost.FIT_FACTOR × (issue + tensor)): a kernel's, summed per fwd+bwd
    for t in report["totals"]:
        fits = [r["fit_ms"] for r in report["rows"] if (r["shape"], r["mode"]) == (t["shape"], t["mode"])]
        assert len(fits) == t["passes"] and all(f > 0 for f in fits) and abs(sum(fits) - t["fit_ms"]) < 1e-12, t
    # the noise alone (25.25 per element with triton 3.7.1): the accurate libm-style logs it replaced
    # cost ~25 instructions each, Philox-10 three more per element than Philox-7, the Taylor series and
    # natural-unit logs 4 more than the cubic and log₂ units
    (noise,) = report["noise"]
    assert noise["spill_bytes"] == 0 and 20 < noise["instr_per_elem"] <= 26, noise


def test_static_cost_register_caps_reach_ptxas(tmp_path):
    """A config's register cap (config.KernelConfig.maxnreg, given here by static_cost.py --config) reaches
    every launch of its kind and ptxas: at D = 32 the row kernels (forward, dx: 165–208 registers uncapped)
    under 168 hold 12 warps per SM, dμ (213) under 128 holds 16; the kinds not named keep their own."""
    out = tmp_path / "caps.json"
    proc = subprocess.run([sys.executable, "benchmarks/static_cost.py", "--shapes", "2048,65536,32", "--modes", "soft",
                           "--config", "row=64,32,4,2,168", "--config", "col=32,128,8,2,128", "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = {r["kernel"]: r for r in report["rows"]}
    for kernel in ("_gmvq_fwd_kernel", "_gmvq_bwd_dx_kernel"):
        assert rows[kernel]["regs"] <= 168 and rows[kernel]["warps_per_sm"] >= 12, rows[kernel]
    assert rows["_gmvq_bwd_dmu_kernel"]["regs"] <= 128 and rows["_gmvq_bwd_dmu_kernel"]["warps_per_sm"] == 16
    assert rows["_gmvq_fwd_colsum_kernel"]["regs"] > 168, rows["_gmvq_fwd_colsum_kernel"]  # q̄'s kind: not capped
    assert "row KernelConfig(BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2, maxnreg=168)" in report["configs"]


def calibrate(times, report):
    proc = subprocess.run([sys.executable, "benchmarks/static_cost.py", "--calibrate", str(times), str(report)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_static_cost_calibrate(tmp_path):
    """--calibrate: the factor is the median of measured / (issue + tensor) over the kernels of at least
    FIT_MIN_MS, each kernel's ratio printed against it. Three kernels with the same counts timed 1 : 1 : 3
    fit at the middle one (ratios 1, 1, 3: a mean would give 0.6, 0.6, 1.8); a fourth under 0.1 ms, 10×
    slower for its count, is left out (with it the median would move to 2), and so is hard mode's time
    (printed against the soft fit). The committed H200 run and the report of its code give FIT_FACTOR
    (static_cost's constant was fitted so: its dots' FLOPs count)."""
    row = dict(shape=[4096, 4096, 64], mode="soft", dtype="bf16", instr_per_elem=50.0, num_warps=4, block=[64, 32],
               mma={})
    report = tmp_path / "report.json"
    # k_b as a report since the fit writes it: its FLOPs per element (0) read, not rebuilt from its shapes
    report.write_text(json.dumps({"rows": [dict(row, kernel=n) for n in ("k_a", "k_c")]
                                  + [dict(row, kernel="k_b", tensor_flops_per_elem=0.0,
                                          mma={"HGMMA.64x32x16.F32.BF16": 100}),
                                     dict(row, kernel="k_short", instr_per_elem=0.5),
                                     dict(row, kernel="k_a", mode="hard")]}))  # hard rows: not the run's mode
    times = tmp_path / "times.jsonl"
    base = {"check": "kernel_times", "N": 4096, "K": 4096, "D": 64}
    times.write_text("\n".join(json.dumps(r) for r in (
        {"check": "other"},
        dict(base, ms_per_fwd_bwd={"k_a": 0.5, "k_b": 0.5, "k_c": 1.5, "k_short": 0.05, "other": 0.1}),
        # hard mode's times: reported against the soft fit, not fitted (a mode-less record is soft)
        dict(base, mode="hard", ms_per_fwd_bwd={"k_a": 5.0}))) + "\n")
    out = calibrate(times, report)
    ratios = {tuple(c.strip() for c in line.split("|")[2:4]): float(line.split("|")[5]) for line in out.splitlines()
              if line.startswith("| 4096")}
    assert ratios == {("soft", "k_a"): 1.0, ("soft", "k_b"): 1.0, ("soft", "k_c"): 3.0, ("soft", "k_short"): 10.0,
                      ("hard", "k_a"): 10.0}, out
    assert "0.050 (not fitted)" in out and "5.000 (not fitted)" in out, out
    results = ROOT / "benchmarks" / "results"
    out = calibrate(results / "NVIDIA_H200-2026-12-04" / "correctness_run2.jsonl",
                    results / "static-2026-12-04-dmuorder" / "static36.json")
    assert out.startswith("fit_ms = 1.88 × (issue + tensor) (FIT_FACTOR now 1.88)"), out


def test_static_cost_fast_mode_fails_on_serialised_wgmma(tmp_path):
    """With GMVQ_SERIAL_WGMMA=1 (config.serial_wgmma: the loops as before docs/speed_history.md, item 20) ptxas
    serialises the wgmma of dx and dμ again, and --fast reports it and exits 1: the guard above can fail."""
    out = tmp_path / "static.json"
    proc = subprocess.run([sys.executable, "benchmarks/static_cost.py", "--fast", "--modes", "soft", "--out", str(out)],
                          cwd=ROOT, env=dict(ENV, GMVQ_SERIAL_WGMMA="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    serialized = {r["kernel"] for r in report["rows"] if "C7515" in r["wgmma_serialized"]}
    assert {"_gmvq_bwd_dx_kernel", "_gmvq_bwd_dmu_kernel"} <= serialized, serialized
    assert "WGMMA SERIALISED (ptxas C7515): _gmvq_bwd_dx_kernel" in proc.stdout


def test_overlap_probe_keeps_the_distance_dot_in_flight():
    """benchmarks/overlap_probe.py (lever 14 of benchmarks/README.md), compiled for sm_90, each schedule with
    each filler at D = 64 and 128 (two distance dots per loop trip): no spills and no serialised wgmma
    (Triton's tl.dot serialises the same schedule: the toy of results/static-2026-12-04-serial/). Waited on
    at once, nothing lies between a dot's HGMMAs and its wait. In flight into fresh registers, ptxas moves
    the HGMMAs down to the wait (a window of 3–35 instructions with triton 3.7.1, 3–42 with 3.8.0, in
    loops of about 820–2580): under a fifth of the longest window of the same dots carried through the
    loop; into the loop-carried tile's registers it leaves at D = 128 a window of over 100 instructions
    at every dot, with MUFU work in it, and at D = 64 at one of the two dots at least. Pinned (the μ
    ring's unused slots), the MUFU-log variants hold 8 warps per SM, as the real kernels, with the same
    code. The GPU run times them. Triton 3.9's ptxas schedules a little differently (below; its in-flight
    windows are 3–48 instructions, at D = 128 with MUFU work in them)."""
    proc = subprocess.run([sys.executable, "benchmarks/overlap_probe.py"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    # triton 3.9 assembles sm_90 with its CUDA 13.4 ptxas (3.6–3.8: 12.x), which leaves one instruction
    # between a waited dot and its wait, and at D = 128 with MUFU logs carries one of the two dots past
    # 100 instructions (135 and 79), not both
    import triton
    ptxas_13 = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 9)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = {(r["mufu_logs"], r["D"], r["schedule"], r["pinned"]): r
            for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    schedules = ("waited", "in_flight", "in_flight_carried")
    assert set(rows) == {(f, D, s, p) for f in (0, 1) for D in (64, 128) for s in schedules
                         for p in ((False, True) if f else (False,))}, sorted(rows)
    for (mufu_logs, D, schedule, pinned), r in rows.items():
        assert r["spill_bytes"] == 0 and not r["wgmma_serialised"], r
        if pinned:
            free = rows[(mufu_logs, D, schedule, False)]
            assert r["warps_per_sm"] == 8 and (r["loop_len"], r["dots"]) == (free["loop_len"], free["dots"]), r
        dots = r["dots"]
        assert len(dots) == 2, r
        windows = [d["window"] for d in dots]
        if schedule == "waited":
            assert all(d["window"] <= ptxas_13 and d["mufu"] == 0 for d in dots), r
        elif schedule == "in_flight":
            carried = rows[(mufu_logs, D, "in_flight_carried", pinned)]["dots"]
            assert 5 * max(windows) < max(d["window"] for d in carried), (r, carried)
        elif D == 128 and not (ptxas_13 and mufu_logs):
            assert min(windows) > 100 and all(d["mufu"] > 0 for d in dots), r
        else:
            assert max(windows) > 100 and (D == 64 or all(d["mufu"] > 0 for d in dots)), r
