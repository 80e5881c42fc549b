"""The static model against the H200's timings of the same kernels: measured fwd / bwd / fwd+bwd (bf16,
soft, ``speed.py``) over ``model_ms`` (pipes overlapped) and ``serial_ms`` (tensor cores added to the
rest).

- 2026-11-30: ``kernels_2026-11-30.json`` is ``static_cost.py`` with ``serial_ms`` run on the code of
  commit d5a4468 (speed history items 1-16, the kernels and table configs that run timed) for the three
  shapes the GPU was not host-bound at; its instruction counts and model_ms equal
  ``static-2026-11-30f``'s.
- 2026-11-27: the kernels of commit ff5c39c, whose report (``static-2026-11-29/baseline_ff5c39c.json``)
  predates ``serial_ms``: it is rebuilt from each kernel's counts there (issue cycles from its
  instructions per element, tensor cycles from its MMA shapes, as static_cost.model does; checked to
  give back model_ms for every issue-bound kernel, and static_cost.py's own serial_ms for the 2026-11-30
  kernels).

    python benchmarks/results/static-2026-12-04-serial/calibration.py
"""
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.dirname(HERE)
sys.path[:0] = [os.path.dirname(RESULTS), os.path.dirname(os.path.dirname(RESULTS))]
from gmvq_kernels.devtools import mma_flops  # noqa: E402
from static_cost import CLOCK_HZ, SMS, TENSOR_FLOPS_PER_CLK  # noqa: E402  (the model's constants)

FWD = ("_gmvq_fwd_kernel", "_gmvq_fwd_colsum_kernel")


def measured(folder):
    out = {}
    for r in json.load(open(os.path.join(RESULTS, folder, "speed.json")))["rows"]:
        if r["dtype"] == "bf16" and r["provider"] == "triton" and not r.get("sweep"):
            out[(r["N"], r["K"], r["D"]), r["mode"]] = r["ms"]
    return out


def rebuilt_serial_ms(r):
    """serial_ms of one row of a report without it: (issue + tensor) cycles × iterations × CTAs per SM."""
    (N, K, _), (bn, bk), warps = r["shape"], r["block"], r["num_warps"]
    tile = bn * bk
    to_ms = math.ceil(r["grid"] / SMS) * math.ceil(N * K / (r["grid"] * tile)) / CLOCK_HZ * 1e3
    issue = r["instr_per_elem"] * tile / (warps * 32) * warps / 4 / max(min(1.0, r["resident_warps"] / 8), 1e-3)
    # per CTA: an HGMMA runs once per warpgroup, an HMMA once per warp (as Sass.mma_flops_per_cta)
    flops = sum(mma_flops(op) * n * (max(1, warps // 4) if op.startswith("HGMMA") else warps)
                for op, n in r["mma"].items())
    if r["bound"] == "issue":
        assert abs(issue * to_ms - r["model_ms"]) <= 1e-6 * r["model_ms"], r["kernel"]
    return (issue + flops / TENSOR_FLOPS_PER_CLK["bf16"]) * to_ms


def table(title, rows, times):
    print(f"\n{title}\n")
    print("| N, K, D | part | measured ms | model ms | measured / model | serial ms | measured / serial |")
    print("|---|---|---|---|---|---|---|")
    for shape in sorted({tuple(r["shape"]) for r in rows}, key=lambda s: s[2]):
        if (shape, "fwd_bwd") not in times or shape == (8192, 1024, 64):  # row 1: host-bound on the GPU
            continue
        here = [r for r in rows if tuple(r["shape"]) == shape]
        for part in ("fwd", "bwd", "fwd_bwd"):
            sel = [r for r in here if part == "fwd_bwd" or (r["kernel"] in FWD) == (part == "fwd")]
            model, serial = sum(r["model_ms"] for r in sel), sum(r["serial_ms"] for r in sel)
            ms = times[shape, part]
            print(f"| {', '.join(map(str, shape))} | {part} | {ms:.2f} | {model:.2f} | {ms / model:.2f} | "
                  f"{serial:.2f} | {ms / serial:.2f} |")


soft = lambda rows: [r for r in rows if r["dtype"] == "bf16" and r["mode"] == "soft"]  # noqa: E731
new = soft(json.load(open(os.path.join(HERE, "kernels_2026-11-30.json")))["rows"])
for r in new:  # the rebuild gives back static_cost.py's own serial_ms where it has one
    assert abs(rebuilt_serial_ms(r) - r["serial_ms"]) <= 1e-6 * r["serial_ms"], r["kernel"]
table("2026-11-30 kernels (d5a4468), NVIDIA_H200-2026-11-30:", new, measured("NVIDIA_H200-2026-11-30"))
old = soft(json.load(open(os.path.join(RESULTS, "static-2026-11-29", "baseline_ff5c39c.json")))["rows"])
table("2026-11-27 kernels (ff5c39c; serial ms rebuilt from the report's counts), NVIDIA_H200-2026-11-27:",
      [dict(r, serial_ms=rebuilt_serial_ms(r)) for r in old], measured("NVIDIA_H200-2026-11-27"))
