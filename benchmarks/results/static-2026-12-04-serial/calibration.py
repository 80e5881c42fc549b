"""The static model against the H200's timings of the same kernels (2026-11-30): measured fwd / bwd /
fwd+bwd (bf16, soft, ``speed.py``) over ``model_ms`` (pipes overlapped) and ``serial_ms`` (tensor cores
added to the rest). ``kernels_2026-11-30.json``: ``static_cost.py`` with ``serial_ms`` run on the code
of commit d5a4468 (speed history items 1-16, the kernels and table configs that run timed) for the
three shapes the GPU was not host-bound at; its instruction counts and model_ms equal
``static-2026-11-30f``'s.

    python benchmarks/results/static-2026-12-04-serial/calibration.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.dirname(HERE)
FWD = ("_gmvq_fwd_kernel", "_gmvq_fwd_colsum_kernel")

report = json.load(open(os.path.join(HERE, "kernels_2026-11-30.json")))
measured = {}
for r in json.load(open(os.path.join(RESULTS, "NVIDIA_H200-2026-11-30", "speed.json")))["rows"]:
    if r["dtype"] == "bf16" and r["provider"] == "triton" and not r.get("sweep"):
        measured[(r["N"], r["K"], r["D"]), r["mode"]] = r["ms"]
print("| N, K, D | part | measured ms | model ms | measured / model | serial ms | measured / serial |")
print("|---|---|---|---|---|---|---|")
for shape in sorted({tuple(r["shape"]) for r in report["rows"]}, key=lambda s: s[2]):
    rows = [r for r in report["rows"] if tuple(r["shape"]) == shape and r["mode"] == "soft"]
    for part in ("fwd", "bwd", "fwd_bwd"):
        sel = [r for r in rows if part == "fwd_bwd" or (r["kernel"] in FWD) == (part == "fwd")]
        model, serial = sum(r["model_ms"] for r in sel), sum(r["serial_ms"] for r in sel)
        ms = measured[shape, part]
        print(f"| {', '.join(map(str, shape))} | {part} | {ms:.2f} | {model:.2f} | {ms / model:.2f} | {serial:.2f} | "
              f"{ms / serial:.2f} |")
