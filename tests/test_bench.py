"""pytest-benchmark timings of small shapes (skipped unless --run-benchmarks) and smoke runs of the
benchmark scripts (always: they must never rot)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gmvq_kernels as gk

from utils import make_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.benchmark_suite
@pytest.mark.parametrize("impl", ["reference", "torch", "triton"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_speed_small(benchmark, impl, mode, device):
    x, m, lv, _ = [t if t is None else t.requires_grad_(mode != "fwd") for t in make_inputs(64, 128, 16, device=device)]

    def step():
        out = gk.gmvq(x, m, lv, impl=impl)
        if mode == "fwd_bwd":
            (gk.albo_loss(out) + out.quantized.square().mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark(step)


def benchmark_module(name):
    """A script of benchmarks/ imported as a module (its functions tested without running it)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def run_script(args, interpret):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not interpret:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_speed_smoke(tmp_path):
    out = run_script(["benchmarks/speed.py", "--smoke", "--out", str(tmp_path / "s.json")], interpret=True)
    import json
    rows = json.load(open(tmp_path / "s.json"))["rows"]
    assert {r["provider"] for r in rows} == {"reference", "torch_compile", "naive_compile", "triton", "triton_serial",
                                             "triton_no_norm_dot", "triton_hard", "triton_eager_rescale",
                                             "triton_defer_dq", "cdist_argmin"}
    assert {r["provider"] for r in rows if r["mode"] == "encode"} == {"reference", "triton", "triton_no_norm_dot",
                                                                     "cdist_argmin"}
    assert all(r["ms"] is not None for r in rows), [r for r in rows if r["ms"] is None]
    assert "triton" in out


def test_speed_targets(tmp_path, capsys):
    """speed.py's targets read from a full run's rows: ratios and bounds as stated, a missing or failed row
    "not measured", and no sweep row at an anchor shape, fp32 row or forward alone taken for the anchor's row;
    --targets prints the same from a speed.json."""
    import json

    speed = benchmark_module("speed")
    A = speed.ANCHOR_SHAPES

    def row(provider, shape, ms, **kw):
        return dict(provider=provider, mode="fwd_bwd", dtype="bf16", N=shape[0], K=shape[1], D=shape[2], ms=ms, **kw)

    rows = [row("triton", A[1], 0.1, sweep="K"), dict(row("triton", A[0], 0.1), dtype="fp32-tf32"),
            dict(row("triton", A[0], 0.1), mode="fwd"),
            row("triton", A[0], 0.7), row("sdpa", A[0], 0.5),
            row("triton", A[1], 2.0), row("sdpa", A[1], 1.0), row("naive_compile", A[1], 4.5),
            row("torch_compile", A[1], 3.0),
            row("triton", A[2], 5.0), row("sdpa", A[2], None, status="OOM"),
            row("triton", A[3], 41.0), row("sdpa", A[3], 30.0)]
    got = {(t["target"], tuple(t["shape"])): (t["value"], t["status"]) for t in speed.speed_targets(rows)}
    approx = pytest.approx
    assert got == {("fwd+bwd / SDPA-flash", A[0]): (approx(1.4), "met"),
                   ("fwd+bwd / SDPA-flash", A[1]): (approx(2.0), "missed"),
                   ("fwd+bwd / SDPA-flash", A[2]): (None, "not measured"),
                   ("fwd+bwd / SDPA-flash", A[3]): (approx(41 / 30), "met"),
                   ("naive_compile / fwd+bwd", A[1]): (approx(2.25), "met"),
                   ("torch_compile / fwd+bwd", A[1]): (approx(1.5), "missed"),
                   ("naive_compile / fwd+bwd", A[2]): (None, "not measured"),
                   ("torch_compile / fwd+bwd", A[2]): (None, "not measured"),
                   ("fwd+bwd ms (eager)", A[0]): (approx(0.7), "met"),
                   ("fwd+bwd ms", A[3]): (approx(41.0), "missed")}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(dict(rows=rows)))
    capsys.readouterr()
    assert speed.main(["--targets", str(path)]) == 0
    assert "| fwd+bwd ms | 8192, 262144, 32 | 41 | <= 40.0 | missed |" in capsys.readouterr().out


def test_speed_cpu_step(tmp_path):
    """speed.py --cpu-step: the module's CPU training step beside VectorQuantize (when installed), as
    the README quotes it."""
    import json

    run_script(["benchmarks/speed.py", "--cpu-step", "--out", str(tmp_path / "c.json")], interpret=False)
    rows = {(r["quantizer"], r["mode"]): r for r in json.load(open(tmp_path / "c.json"))["rows"]}
    assert rows["gmvq_kernels", "eager"]["ms_median"] > 0
    assert rows["gmvq_kernels", "compiled"]["ms_median"] > 0  # torch.compile on this CPU (C++)
    assert rows["gmvq_kernels", "eager"]["ratio_to_reference"] > 0  # impl="torch" against the reference
    assert rows["gmvq_kernels", "eager"]["ratio_to_numpy_rounds"] > 0  # the noise's C rounds against NumPy's
    assert rows["gmvq_kernels", "eager"]["ratio_to_torch_rows"] > 0  # impl="torch"'s C row passes against torch ops
    assert all(r["page_faults_per_step"] >= 0 for r in rows.values())
    if ("vector_quantize_pytorch", "eager") in rows:
        assert rows["gmvq_kernels", "eager"]["ratio_to_vector_quantize_pytorch"] > 0
        assert rows["gmvq_kernels", "compiled"]["ratio_to_eager_vector_quantize_pytorch"] > 0


def test_speed_cpu_step_one_variant(tmp_path):
    """--only QUANTIZER:MODE (what --processes runs in each process): that variant alone."""
    import json

    run_script(["benchmarks/speed.py", "--cpu-step", "--only", "gmvq_kernels:eager", "--out", str(tmp_path / "o.json")],
               interpret=False)
    rows = json.load(open(tmp_path / "o.json"))["rows"]
    assert [(r["quantizer"], r["mode"]) for r in rows] == [("gmvq_kernels", "eager")]


def test_speed_host_cpu(tmp_path):
    """speed.py --host-cpu: the kernel path's host work on CPU tensors, its 7 launches recorded (the
    codes' constants and norm operand, tiles.code_terms, once: the eager backward keeps the forward's; the
    forward, q̄, dx, dμ kernels: bf16 soft at D = 16 takes Δq in dx, backward.defer_delta_q; and the
    epilogues of dx and dμ, tiles.finish_splits), none run; and a gmvq_encode call's (tiles.code_terms and
    the encode kernel)."""
    import json

    run_script(["benchmarks/speed.py", "--host-cpu", "--out", str(tmp_path / "h.json")], interpret=False)
    (row,) = json.load(open(tmp_path / "h.json"))["rows"]
    assert row["launches_per_fwd_bwd"] == 7
    assert 0 < row["us_min"] <= row["us_median"]
    # the torch ops a fwd+bwd dispatches around them, the loss's included: 103 on 2026-11-30, 83 since
    # 2026-12-03, 69 since 2026-12-05, 70 since 2026-12-06 (Ḡ_q̄ shifted by its mean: a mean and a subtraction,
    # 68 → 70; a bound to raise only knowingly: each is host time on a GPU, most a launch too), none reading
    # a value back
    ops = row["torch_ops_per_fwd_bwd"]
    assert 50 < sum(ops.values()) <= 70 and ops["empty"] > 0 and "item" not in ops
    # Triton's per-call binding, by kernel (6 kernels: finish_splits launched twice)
    assert len(row["triton_bind_us"]) == 6 and all(v > 0 for v in row["triton_bind_us"].values())
    assert row["triton_bind_us_per_fwd_bwd"] == pytest.approx(sum(row["triton_bind_us"].values()))
    # the tokenizer path: 19 torch ops and 2 launches per call before 2026-12-05, 11 and 2 since (the
    # codes' constants and norms in one launch, no custom-op dispatch in eager)
    enc = row["encode"]
    assert enc["launches"] == 2 and 0 < enc["us_min"] <= enc["us_median"]
    assert sum(enc["torch_ops"].values()) <= 11 and "item" not in enc["torch_ops"]


@pytest.mark.parametrize("args", [["--impl", "torch", "--cases", "6", "--seed", "3"],
                                  ["--impl", "triton", "--cases", "3", "--seed", "5", "--exact-dots"]],
                         ids=["torch", "triton-exact-dots"])
def test_random_sweep_runs(args):
    """tests/random_sweep.py (a developer's tool, README "Correctness"): a few of its cases, which pass
    (the cases of a seed are fixed), so it keeps working as check_case changes."""
    out = run_script(["tests/random_sweep.py", *args], interpret=args[1] == "triton")
    assert out.strip().splitlines()[-1].startswith(f"{args[3]} cases, 0 failures ({args[1]}, seed {args[5]})"), out


def test_random_training_runs():
    """tests/random_training.py (a developer's tool, README "Correctness"): a few short runs, which stay
    finite (the runs of a seed are fixed; with the script's options of 2026-12-02, eighteenth session,
    1 of these 3 has NaN gradients with torch.xlogy in place of losses.xlogx), so it keeps working as
    the module changes. A change to the options draws other runs: pick a seed that fails without xlogx."""
    out = run_script(["tests/random_training.py", "--runs", "3", "--steps", "3", "--rows", "64", "--seed", "3"],
                     interpret=False)
    assert out.strip().splitlines()[-1] == "3 runs, 0 failing (torch, seed 3)", out


def test_gpu_check_dry(tmp_path):
    """The GPU script's checks on tiny CPU shapes: every check runs without error (the device run is
    short; a crash there wastes it), the untimed ones side by side in two processes as on a GPU."""
    import json

    run_script(["benchmarks/gpu_check.py", "--dry", "--jobs", "2", "--out", str(tmp_path)], interpret=True)
    rows = [json.loads(line) for line in open(tmp_path / "correctness.jsonl")]
    assert [r for r in rows if r["check"] == "error"] == []
    warm = next(r for r in rows if r["check"] == "warm")  # a warm step: split_check's calls, untimed
    assert warm["failed"] == [] and "split_k" not in [r["check"] for r in rows[:rows.index(warm)]], rows
    # --tune's path: winners of every kind timed and written into (a copy of) config.py (no "delta" at D = 8:
    # the dx pass takes Δq there, autotune.training_kinds)
    assert {r["key"][2] for r in rows if r["check"] == "tune"} == {"row", "col", "colsum", "encode"}
    assert (tmp_path / "tune.json").exists() and "KC(" in (tmp_path / "config.py").read_text().split("# END TUNED")[0]
    assert {"full", "window", "deterministic", "torch_compile", "host_overhead", "split_k", "d512_tiles",
            "register_caps", "colsum_tiles", "kernel_times", "kernel_times_encode",
            "done"} <= {r["check"] for r in rows}
    nan = [r for r in rows if r["check"] == "nan_policy"]
    assert len(nan) == 4 and all(r["ok"] for r in nan), nan
    assert next(r for r in rows if r["check"] == "kernel_times")["ms_total"] > 0
    full = [r for r in rows if r["check"] == "full"]
    assert len(full) == 7 and all(r["ok"] for r in full), full
    assert next(r for r in rows if r["check"] == "ncu")["skipped"] == "not a GPU"
    ckpt = [r for r in rows if r["check"] == "checkpoint"]  # the module under activation checkpointing
    assert len(ckpt) == 2 and all(r["ok"] for r in ckpt), ckpt
    amp = [r for r in rows if r["check"] == "amp_backward"]  # a backward inside the autocast region
    assert len(amp) == 2 and all(r["ok"] for r in amp), amp
    capture = [r for r in rows if r["check"] == "capture"]  # the eval module under jit.trace and export
    assert len(capture) == 2 and all(r["ok"] for r in capture), capture
    ev = next(r for r in rows if r["check"] == "eval_call")  # the eval call beside the training call
    assert ev["ms_train"] > 0 and ev["ms_eval"] > 0, ev
    wide = next(r for r in rows if r["check"] == "wide")  # the row kernels' 64-bit code offsets, forced
    assert wide["wide"] and wide["ok"] and wide["codes_mismatch"] == wide["encode_mismatch"] == 0, wide
    host = next(r for r in rows if r["check"] == "host_overhead")
    assert all(host[k] > 0 for k in ("us_per_fwd_bwd", "us_fwd_no_grad", "us_fwd_with_graph", "us_bwd_alone")), host
    assert "gmvq_kernels" in (tmp_path / "host_profile.txt").read_text()  # the profiles name our ops
    split = next(r for r in rows if r["check"] == "split_k")
    assert all(split[k] > 0 for k in ("ms_default", "ms_never", "ms_always")), split
    colsum = [r for r in rows if r["check"] == "colsum_tiles"]  # q̄'s pass on the launchers' and a two-CTA tile
    assert len(colsum) == 1 and colsum[0]["ms_default"] > 0 and colsum[0]["ms_two_ctas"] > 0, colsum
    caps = [r for r in rows if r["check"] == "register_caps"]  # soft and hard, each with its variants
    assert [r["hard"] for r in caps] == [False, True], caps
    assert all(r[k] > 0 for r in caps for k in ("ms_default", "ms_row_cap", "ms_col_cap", "ms_both", "ms_col_two_ctas",
                                                 "fwd_ms_default", "fwd_ms_capped")), caps
    comp = {r["mode"]: r for r in rows if r["check"] == "torch_compile"}
    assert comp["default"]["max_rel_err"] < 1e-6 and comp["default"]["compilations"] <= 2, comp
    # mode="reduce-overhead": on a CPU no CUDA graphs, so this runs the check's path, four steps
    assert len(comp["reduce-overhead"]["rel_err_per_step"]) == 4 and comp["reduce-overhead"]["max_rel_err"] < 1e-6, comp
    env = rows[0]  # which configs the device takes (on a CPU: none of the GPU-specific ones)
    assert env["check"] == "env" and env["shared_per_block"] is None and env["small_shared_configs"] is False, env
    assert env["arch_family"] is None, env  # the CPU: the tables


def test_quality_smoke(tmp_path):
    out = run_script(["benchmarks/quality.py", "--smoke", "--out-dir", str(tmp_path)], interpret=False)
    import json
    # what a first-time user sees: what runs and how long it should take, progress, the direction of each metric
    assert "training runs of 20 steps" in out and "Expected about" in out and f"results go to {tmp_path}" in out
    assert "[10/10]" in out and "ETA" in out and "lower is better" in out and "higher is better" in out
    res = json.load(open(tmp_path / "quality.json"))
    assert (tmp_path / "quality_table.md").read_text().count("| digits |") == 5
    assert set(res["methods"]) == {"vqvae", "vqvae_ema_replace", "gumbel_elbo", "gmvq", "gmvq_entropy"}
    for r in res["methods"].values():
        assert 0 < r["mse"] < 1 and r["perplexity"] >= 1 and r["codes_used"] >= 1
    assert (tmp_path / "quality_curves.png").exists() and (tmp_path / "quality_reconstructions.png").exists()


def test_quality_rejects_bad_data(tmp_path):
    import numpy as np
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 1, 6, 6), dtype=np.float32))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "benchmarks/quality.py", "--smoke", "--data", str(bad)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "H, W multiples of 4" in proc.stderr


def test_quality_sweep_smoke(tmp_path):
    """The tuned sweep end to end on a few steps: every method's grid is run and the configuration with
    the lowest validation MSE is the one selected (at K = 128, and again at K = 1024 in stage k1024_tuned,
    where the soft variants select from soft configurations only); every stage's table, the plots, and a
    rerun that resumes from runs.jsonl without training again."""
    import json

    cmd = ["benchmarks/quality_sweep.py", "--smoke", "--out-dir", str(tmp_path)]
    run_script(cmd, interpret=False)
    res = json.load(open(tmp_path / "sweep.json"))
    assert set(res["tables"]) == {"final", "ablation", "k1024", "k1024_budget", "k1024_tuned", "budget"}
    methods = {"vqvae", "vqvae_ema_replace", "gumbel_elbo", "gmvq", "gmvq_entropy"}
    selections = [(per, methods) for per in res["selected"].values()]
    selections.append((res["selected_k1024"]["patches"], methods | {"gmvq soft", "gmvq_entropy soft"}))
    for per, names in selections:
        assert set(per) == names
        for m, s in per.items():
            assert len(s["grid"]) == 2 and s["val_mse"] == min(g["val"]["mse"] for g in s["grid"])
            assert s["overrides"] == min(s["grid"], key=lambda g: g["val"]["mse"])["overrides"]
            assert all(g["overrides"].get("hard", True) is not m.endswith(" soft") for g in s["grid"])
    assert all(res["tables"]["final"][ds]["gmvq"]["seeds"] == 2 for ds in res["selected"])
    tuned = res["tables"]["k1024_tuned"]["patches"]
    assert tuned["gmvq_entropy soft"]["seeds"] == 1 and "val_mse" in tuned["vqvae"]
    assert "gmvq_entropy soft" in res["tables"]["ablation"]["digits"]
    assert "gmvq_entropy soft" in res["tables"]["k1024"]["patches"]
    assert res["tables"]["k1024_budget"]["patches"]["gmvq_entropy soft"]["seeds"] == 1
    assert (tmp_path / "sweep_scatter.png").exists() and (tmp_path / "sweep_curves.png").exists()
    runs = len(open(tmp_path / "runs.jsonl").readlines())
    out = run_script(cmd, interpret=False)
    assert "(0 trained now)" in out and len(open(tmp_path / "runs.jsonl").readlines()) == runs


def test_gpu_check_restarts_after_a_device_fault(monkeypatch, tmp_path):
    """After an illegal memory access every later CUDA call in the process fails: gpu_check logs the
    step and runs itself again from the next one, with its arguments, the first start's clock and the
    same log (appended). Both halves: which errors count as such a fault, and the new command line."""
    gpu_check = benchmark_module("gpu_check")

    assert gpu_check.device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not gpu_check.device_fault(ValueError("x must be (N, D)"))
    seen = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: seen.append((exe, argv)))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", "o", "--resume-at", "3", "--t0=1.5", "--budget-s", "9"])
    log = open(tmp_path / "log", "w")
    gpu_check.restart(7, 123.25, log)
    assert log.closed
    assert seen == [(sys.executable, [sys.executable, gpu_check.__file__, "--out", "o", "--budget-s", "9",
                                      "--resume-at", "7", "--t0", "123.25"])]


def test_gpu_check_runs_untimed_steps_side_by_side(monkeypatch, tmp_path):
    """gpu_check's untimed steps run as child processes, several at a time (--jobs): a child's command
    line (its step alone, the first start's clock), its JSON rows merged into the log as it ends, and an
    error row with the output's tail for a child that dies or outlives --step-timeout-s (killed)."""
    import json

    gpu_check = benchmark_module("gpu_check")

    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", "o", "--jobs", "4", "--resume-at", "3", "--dry"])
    assert gpu_check.child_argv(5, 2.5) == [sys.executable, gpu_check.__file__, "--out", "o", "--dry",
                                            "--only", "5", "--t0", "2.5"]
    py = [sys.executable, "-c"]
    commands = {0: py + ['print("compiling"); print(\'{"check": "a", "x": 1}\')'],
                1: py + ['import os; print(\'{"check": "b"}\', flush=True); print("boom", flush=True); os._exit(3)'],
                2: py + ["import time; time.sleep(60)"]}
    errors = []
    with open(tmp_path / "log", "w") as logfile:
        gpu_check.side_by_side(commands, 2, 5.0, logfile, errors.append)
    rows = [json.loads(line) for line in open(tmp_path / "log")]
    assert sorted(r["check"] for r in rows) == ["a", "b"] and {"check": "a", "x": 1} in rows
    by_step = {e["step"]: e for e in errors}
    assert set(by_step) == {1, 2}, errors
    assert by_step[1]["returncode"] == 3 and "boom" in by_step[1]["output_tail"] and not by_step[1]["killed_after_s"]
    assert by_step[2]["killed_after_s"] == 5.0 and by_step[2]["returncode"] != 0


def test_speed_warm_calls_each_compiling_provider_once(monkeypatch):
    """speed.warm (gpu_check's warm steps): every provider of the full run that compiles (Triton's JIT,
    inductor), once each, untimed, at the anchor row's shape, or the sweeps' shapes; ``measure`` with
    ``warm`` makes the first call and returns before timing."""
    speed = benchmark_module("speed")

    cpu = torch.device("cpu")
    row = speed.measure("triton", "fwd_bwd", "bf16", 8, 16, 16, cpu, warm=True)
    assert "status" not in row and "ms" not in row, row  # ran, untimed
    calls = []
    monkeypatch.setattr(speed, "measure", lambda *a, **k: calls.append((a, k)) or {})
    assert speed.warm(cpu, 1) == []
    want = [c for c in speed.anchor_cases(1) if c[0].startswith("triton") or c[0].endswith("_compile")]
    assert [(a[0], a[1], a[2], k["prec"]) for a, k in calls] == want and len(want) == 15  # 13 before triton_defer_dq
    assert all(a[3:6] == speed.ANCHOR_SHAPES[1] and k["warm"] for a, k in calls)
    calls.clear()
    speed.warm(cpu, 1, lambda provider: provider.endswith("_compile"))
    assert [a[0] for a, _ in calls] == ["torch_compile", "naive_compile"]
    calls.clear()
    speed.warm(cpu)
    assert [a[3:6] for a, _ in calls] == [shape for _, shape in speed.sweep_shapes()]


def test_gpu_check_reads_nsight_compute_csv():
    """ncu_check's parser: ``ncu --csv --page details`` output (ncu's own lines before the header, one
    row per metric, rule columns, thousands separators, "n/a") into one dict per kernel launch, in order."""
    gpu_check = benchmark_module("gpu_check")

    head = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
            '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value","Rule Name","Rule Type",'
            '"Rule Description"')

    def row(i, kernel, section, name, unit, value):
        return (f'"{i}","7","python3","h","{kernel}","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","{section}",'
                f'"{name}","{unit}","{value}","","",""')

    text = "\n".join(["==PROF== Connected to process 7 (python3)", "==PROF== Profiling \"_gmvq_fwd_kernel\"", head,
                      row(0, "_gmvq_fwd_kernel", "GPU Speed Of Light Throughput", "Duration", "ns", "1,234,567"),
                      row(0, "_gmvq_fwd_kernel", "Command line profiler metrics",
                          "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio", "", "0.41"),
                      row(0, "_gmvq_fwd_kernel", "Occupancy", "Achieved Occupancy", "%", "n/a"),
                      row(1, "_gmvq_bwd_dx_kernel", "Occupancy", "Registers Per Thread", "register/thread", "255"),
                      "==PROF== Disconnected from process 7"])
    assert gpu_check.parse_ncu_csv(text) == [
        {"kernel": "_gmvq_fwd_kernel", "Duration": 1234567.0, "Achieved Occupancy": "n/a",
         "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio": 0.41},
        {"kernel": "_gmvq_bwd_dx_kernel", "Registers Per Thread": 255.0}]
    assert gpu_check.parse_ncu_csv("==ERROR== the profiler could not start") == []


def test_gpu_check_ncu_step_command_and_row(monkeypatch):
    """ncu_check's glue, with ncu stood in for (the device run is short): per shape one ncu command that
    profiles only the warmed-up call (--profile-from-start off around --ncu-case), only our kernels, the
    sections and the stall-reason and pipe metrics, and one logged row with the parsed kernels, or with
    ncu's output when nothing parsed."""
    import subprocess

    gpu_check = benchmark_module("gpu_check")

    csv_text = ('"ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"\n'
                '"0","_gmvq_fwd_kernel","Occupancy","Achieved Occupancy","%","11.9"\n')
    runs = []

    def fake_run(cmd, **kw):
        runs.append(cmd)
        out = csv_text if len(runs) == 1 else "==ERROR== no kernels were profiled\n"
        return subprocess.CompletedProcess(cmd, 0 if len(runs) == 1 else 1, out, "")

    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/opt/ncu" if name == "ncu" else None)
    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = []
    gpu_check.ncu_check(torch.device("cuda"), rows.append, shapes=((32, 64, 16), (8, 16, 16)))
    assert len(runs) == 2 and all(cmd[0] == "/opt/ncu" for cmd in runs)
    cmd = runs[0]
    assert cmd[cmd.index("--profile-from-start") + 1] == "off" and cmd[cmd.index("--kernel-name") + 1] == "regex:^_"
    assert {cmd[i + 1] for i, a in enumerate(cmd) if a == "--section"} == set(gpu_check.NCU_SECTIONS)
    assert "stalled" in cmd[cmd.index("--metrics") + 1] and cmd[cmd.index("--ncu-case") + 1] == "32,64,16"
    assert rows[0]["kernels"] == [{"kernel": "_gmvq_fwd_kernel", "Achieved Occupancy": 11.9}]
    assert rows[0]["output_tail"] is None and (rows[0]["N"], rows[0]["K"], rows[0]["D"]) == (32, 64, 16)
    assert rows[1]["kernels"] == [] and "no kernels were profiled" in rows[1]["output_tail"]
