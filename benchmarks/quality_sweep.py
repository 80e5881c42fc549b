"""Tuned quality study: every method of quality.py gets the same number of configurations, each is
selected on a validation split, and the selected ones are reported on the test split over several seeds.

Stages (each training run is one line of ``runs.jsonl`` in the output folder; a rerun with the same
folder skips the runs already there, so an interrupted sweep resumes):

  select    every configuration of GRIDS (6 per method) × dataset, seed 0; trained on the fit split
            (the training split less a validation split the size of the test split)
  final     the configuration with the lowest validation MSE, per method and dataset, seeds 0 .. S−1
  ablation  both GM-VQ methods' selected configurations with the paper's soft relaxation (decoder fed
            Σ_k y_k μ_k), with noise injection (z + s·ε), and with both (not part of the selection:
            reported with their validation MSE beside the test metrics)
  k1024     every method's patches-selected configuration at K = 1024, and the GM-VQ methods' soft
            variants
  k1024_budget  the same at 4× the steps
  k1024_tuned   every method tuned again at K = 1024 and 4× the steps, and the GM-VQ methods' grids
            with soft samples as two more: the whole grid at seed 0, selected on validation MSE, then
            the selected configuration's seeds 0 .. E−1 (--extra-seeds; the README's table of this
            stage: --extra-seeds 3, i.e. 7 runs more than the default's 2)
  budget    every method's digits-selected configuration at 4× the steps

Writes ``runs.jsonl``, ``sweep.json`` (selection, per-stage tables with mean ± std), ``sweep_table.md``,
``sweep_scatter.png`` (validation MSE against perplexity, every configuration a point) and
``sweep_curves.png`` (codebook usage, q̄ perplexity and codebook gradient norm over training).

    python benchmarks/quality_sweep.py                  # everything (2 CPU cores: ~3.5 h; k1024_budget ~30 min
                                                        # of it, k1024_tuned ~2 h: 41 runs more)
    python benchmarks/quality_sweep.py --smoke          # seconds, CI
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality as Q  # noqa: E402

# the same number of configurations for every method: the knob the method's authors tune (commitment
# weight; EMA decay × dead-code threshold; τ's end × σ_z²; γ with β = 1; β with γ = 1), the rest at
# quality.DEFAULTS
GRIDS = {
    "vqvae": [dict(commitment=c) for c in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)],
    "vqvae_ema_replace": [dict(decay=d, dead_after=t) for d in (0.8, 0.9, 0.99) for t in (25, 100)],
    "gumbel_elbo": [dict(sigma_z2=s, tau_end=t) for s in (0.1, 0.03) for t in (0.3, 0.5, 0.7)],
    "gmvq": [dict(gamma=g) for g in (0.1, 0.3, 1.0, 3.0)] + [dict(gamma=1.0, tau_end=0.6),
                                                              dict(gamma=1.0, sigma_z2=0.03)],
    "gmvq_entropy": [dict(beta=b) for b in (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)],
}
ABLATIONS = {"soft": dict(hard=False), "noise_injection": dict(noise_injection=True),
             "soft+noise_injection": dict(hard=False, noise_injection=True)}
STAGES = ("select", "final", "ablation", "k1024", "k1024_budget", "k1024_tuned", "budget")


def label(overrides):
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def splits(dataset, smoke):
    """(fit, {"val", "test"}): quality.py's train/test split, with a validation split the size of the
    test split taken from the training split."""
    train, test = Q.load_dataset(dataset, seed=0)
    if smoke:
        train, test = train[:320], test[:64]
    n_val = len(test)
    return train[n_val:], dict(val=train[:n_val], test=test)


class Sweep:
    def __init__(self, args):
        self.args = args
        self.path = os.path.join(args.out_dir, "runs.jsonl")
        self.runs = {}
        if os.path.exists(self.path):
            for line in open(self.path):
                r = json.loads(line)
                self.runs[r["key"]] = r
        self.data = {}
        self.t0 = time.time()
        self.trained = 0

    def run(self, stage, dataset, method, overrides, seed, *, K=None, steps=None):
        """One training run (or its stored result): metrics on val and test, the curve, the seconds."""
        a = self.args
        K, steps = K or a.codebook_size, steps or a.steps
        cfg = dict(Q.DEFAULTS[method], **overrides)
        key = json.dumps([dataset, method, cfg, seed, K, steps, a.dim, a.batch], sort_keys=True)
        if key in self.runs:
            return self.runs[key]
        if dataset not in self.data:
            self.data[dataset] = splits(dataset, a.smoke)
        fit, evals = self.data[dataset]
        t = time.time()
        try:
            metrics, curve, _ = Q.train_one(method, fit, evals, dim=a.dim, K=K, steps=steps, batch=a.batch, seed=seed,
                                            log_every=max(1, steps // 30), cfg=cfg)
            error = None
        except (RuntimeError, ValueError) as exc:  # e.g. a configuration whose parameters went non-finite
            metrics = {s: dict(mse=float("inf"), perplexity=float("nan"), codes_used=0) for s in ("val", "test")}
            curve, error = [], f"{type(exc).__name__}: {exc}"
        r = dict(key=key, stage=stage, dataset=dataset, method=method, overrides=overrides, cfg=cfg, seed=seed, K=K,
                 steps=steps, val=metrics["val"], test=metrics["test"], curve=curve, error=error,
                 seconds=time.time() - t)
        self.runs[key] = r
        with open(self.path, "a") as fh:
            fh.write(json.dumps(r) + "\n")
        self.trained += 1
        print(f"  [{stage}] {dataset} {method} {label(overrides)} seed {seed} K {K} steps {steps}: "
              f"val MSE {r['val']['mse']:.5f}, test MSE {r['test']['mse']:.5f}, {r['test']['codes_used']} codes"
              f"{' ERROR ' + error if error else ''} ({r['seconds']:.0f} s; {time.time() - self.t0:.0f} s total)",
              flush=True)
        return r


def select(sw, stage, dataset, method, grid, **kw):
    """Every configuration of ``grid`` at seed 0; the one with the lowest validation MSE, and the grid."""
    cands = [sw.run(stage, dataset, method, o, 0, **kw) for o in grid]
    best = min(cands, key=lambda r: r["val"]["mse"])
    return dict(overrides=best["overrides"], val_mse=best["val"]["mse"],
                grid=[dict(overrides=r["overrides"], val=r["val"], error=r["error"]) for r in cands])


def summary(runs, splits=("test",)):
    """Mean and std over seeds of the first split's metrics; "val_mse" too when "val" is listed."""
    out = Q.summarize([r[splits[0]] for r in runs])
    if "val" in splits:
        out["val_mse"] = float(np.mean([r["val"]["mse"] for r in runs]))
    out["seeds"] = len(runs)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--datasets", nargs="+", default=["digits", "patches"], choices=["digits", "patches"])
    p.add_argument("--methods", nargs="+", default=list(Q.METHODS), choices=Q.METHODS)
    p.add_argument("--seeds", type=int, default=3, help="seeds of the final and ablation stages")
    p.add_argument("--extra-seeds", type=int, default=2, help="seeds of the k1024 and budget stages")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out-dir", default=os.path.join("results", time.strftime("quality-sweep-%Y-%m-%d")))
    p.add_argument("--smoke", action="store_true", help="two configurations per method, a few steps (CI)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads (default: every core). One-thread sweeps of different --methods run "
                        "side by side, each into its own folder (their runs.jsonl merged after), use 2 cores better")
    args = p.parse_args(argv)
    grids = {m: GRIDS[m] for m in args.methods}
    if args.smoke:
        args.steps, args.seeds, args.extra_seeds, args.codebook_size, args.batch = 10, 2, 1, 16, 32
        grids = {m: g[:2] for m, g in grids.items()}
    torch.set_num_threads(max(1, args.threads))
    os.makedirs(args.out_dir, exist_ok=True)
    sw = Sweep(args)
    print(f"GM-VQ tuned quality sweep: stages {', '.join(args.stages)}; {sum(map(len, grids.values()))} "
          f"configurations × {len(args.datasets)} datasets to select from; results go to {args.out_dir}/", flush=True)

    selected, tables = {}, {}
    for ds in args.datasets:
        selected[ds] = {}
        for m in args.methods:
            selected[ds][m] = select(sw, "select", ds, m, grids[m])
    selected_k1024 = {}  # {"patches": {case: selection}} of stage k1024_tuned
    finals = {}  # (dataset, method): the selected configuration's runs
    if "final" in args.stages:
        finals = {(ds, m): [sw.run("final", ds, m, selected[ds][m]["overrides"], s) for s in range(args.seeds)]
                  for ds in args.datasets for m in args.methods}
        tables["final"] = {ds: {m: summary(finals[ds, m], splits=("test", "val")) for m in args.methods}
                           for ds in args.datasets}
    mixture = [m for m in ("gmvq", "gmvq_entropy") if m in args.methods]
    if "ablation" in args.stages and mixture:
        tables["ablation"] = {ds: {f"{m} {name}": summary([sw.run("ablation", ds, m,
                                                                  dict(selected[ds][m]["overrides"], **extra), s)
                                                           for s in range(args.seeds)], splits=("test", "val"))
                                   for m in mixture for name, extra in {"selected": {}, **ABLATIONS}.items()}
                              for ds in args.datasets}
    if "patches" in args.datasets:
        K = 64 if args.smoke else 1024
        cases = [(m, m, {}) for m in args.methods] + [(f"{m} soft", m, ABLATIONS["soft"]) for m in mixture]
        for stage, steps in (("k1024", args.steps), ("k1024_budget", 4 * args.steps)):
            if stage in args.stages:
                tables[stage] = {"patches": {name: summary([sw.run(stage, "patches", m,
                                                                   dict(selected["patches"][m]["overrides"], **extra),
                                                                   s, K=K, steps=steps)
                                                            for s in range(args.extra_seeds)])
                                             for name, m, extra in cases}}
        if "k1024_tuned" in args.stages:
            kw = dict(K=K, steps=4 * args.steps)
            sel = {name: select(sw, "k1024_tuned", "patches", m, [dict(o, **extra) for o in grids[m]], **kw)
                   for name, m, extra in cases}
            selected_k1024["patches"] = sel
            runs = {name: [sw.run("k1024_tuned", "patches", m, sel[name]["overrides"], s, **kw)
                           for s in range(args.extra_seeds)] for name, m, extra in cases}
            tables["k1024_tuned"] = {"patches": {n: summary(rs, splits=("test", "val")) for n, rs in runs.items()}}
    if "budget" in args.stages and "digits" in args.datasets:
        tables["budget"] = {"digits": {m: summary([sw.run("budget", "digits", m, selected["digits"][m]["overrides"],
                                                          s, steps=4 * args.steps) for s in range(args.extra_seeds)])
                                       for m in args.methods}}
    seconds = sum(r["seconds"] for r in sw.runs.values())
    result = dict(selected=selected, selected_k1024=selected_k1024, tables=tables, grids=grids,
                  config=dict(steps=args.steps, seeds=args.seeds, extra_seeds=args.extra_seeds,
                              codebook_size=args.codebook_size, dim=args.dim, batch=args.batch,
                              defaults=Q.DEFAULTS, selection="lowest validation MSE, seed 0",
                              train_seconds=seconds, runs=len(sw.runs), torch=torch.__version__))
    with open(os.path.join(args.out_dir, "sweep.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(args.out_dir, "sweep_table.md"), "w") as fh:
        write_tables(result, fh)
    write_tables(result, sys.stdout)
    plot(dict(select=selected, selected_k1024=selected_k1024), [rs[0] for rs in finals.values()], args.out_dir)
    print(f"{len(sw.runs)} runs, {seconds:.0f} s of training ({sw.trained} trained now); results in {args.out_dir}/")
    return 0


def write_tables(result, fh):
    c = result["config"]
    print(f"# tuned quality sweep: K={c['codebook_size']}, D={c['dim']}, steps={c['steps']}, batch={c['batch']}; "
          f"{c['runs']} runs, {c['train_seconds']:.0f} s of training", file=fh)
    for key, title in (("selected", "lowest validation MSE of each method's grid, seed 0"),
                       ("selected_k1024", f"photo patches at K = 1024 and {4 * c['steps']} steps, stage k1024_tuned")):
        if not result.get(key):
            continue
        print(f"\n## Selected configurations ({title})\n", file=fh)
        print("| dataset | method | selected | val MSE | grid (val MSE) |\n|---|---|---|---|---|", file=fh)
        for ds, per in result[key].items():
            for m, s in per.items():
                grid = "; ".join(f"{label(g['overrides'])}: {g['val']['mse']:.5f}" for g in s["grid"])
                print(f"| {ds} | {m} | {label(s['overrides'])} | {s['val_mse']:.5f} | {grid} |", file=fh)
    titles = dict(final=f"Test split, selected configurations, {c['seeds']} seeds (mean ± std)",
                  ablation=f"GM-VQ relaxation and noise injection at the selected configurations, {c['seeds']} seeds",
                  k1024=f"Photo patches, K = 1024, selected configurations, {c['extra_seeds']} seeds",
                  k1024_budget=f"Photo patches, K = 1024, {4 * c['steps']} steps (4×), selected configurations, "
                               f"{c['extra_seeds']} seeds",
                  k1024_tuned=f"Photo patches, K = 1024, {4 * c['steps']} steps, configurations selected there "
                              f"(stage k1024_tuned), {c['extra_seeds']} seeds",
                  budget=f"Digits, {4 * c['steps']} steps (4×), selected configurations, {c['extra_seeds']} seeds")
    for stage, per_ds in result["tables"].items():
        print(f"\n## {titles[stage]}\n", file=fh)
        print("| dataset | method | test MSE (lower is better) | perplexity (higher is better) | codes used | val MSE |\n"
              "|---|---|---|---|---|---|", file=fh)
        for ds, per in per_ds.items():
            for m, r in per.items():
                val = f"{r['val_mse']:.5f}" if "val_mse" in r else "—"
                print(f"| {ds} | {m} | {Q.metric_cells(r)} | {val} |", file=fh)


def plot(selections, curve_runs, out_dir):
    """The scatter of every selection run (``selections``: {"select" or "selected_k1024": {dataset:
    {method or case: selection}}}, a panel per dataset of each), and the training curves of ``curve_runs``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(selections["select"])
    panels = [(f"{ds}: every configuration (★ selected), validation split", "select", ds) for ds in datasets]
    panels += [(f"{ds}, K = 1024, 4× steps: every configuration (★ selected)", "selected_k1024", ds)
               for ds in selections.get("selected_k1024", {})]
    colors = {m: f"C{i}" for i, m in enumerate(Q.METHODS)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, key, ds) in zip(axes[0], panels):
        for case, s in selections[key][ds].items():
            method, soft = case.split(" ")[0], case.endswith(" soft")
            for g in s["grid"]:
                if np.isfinite(g["val"]["mse"]):
                    chosen = g["overrides"] == s["overrides"]
                    ax.scatter(g["val"]["mse"], g["val"]["perplexity"], color=colors[method],
                               marker="*" if chosen else ("s" if soft else "o"), s=160 if chosen else 30)
        for m, col in colors.items():
            ax.scatter([], [], color=col, label=m)
        if key == "selected_k1024":
            ax.scatter([], [], color="grey", marker="s", label="GM-VQ soft variants")
        ax.set(title=title, xlabel="validation MSE (lower is better)",
               ylabel="code perplexity (higher is better)", xscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "sweep_scatter.png"), dpi=100)

    if not curve_runs:  # no final stage in this run
        return
    keys = ("codes_used", "agg_posterior_perplexity", "codebook_grad_norm")
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 3.6 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for r in curve_runs:
            if r["dataset"] == ds:
                for j, key in enumerate(keys):
                    pts = [(p["step"], p[key]) for p in r["curve"] if key in p]
                    if pts:
                        axes[i][j].plot(*zip(*pts), color=colors[r["method"]], label=r["method"])
        for j, key in enumerate(keys):
            axes[i][j].set(title=f"{ds}: {key} (batch, seed 0)", xlabel="step",
                           yscale="log" if key == "codebook_grad_norm" else "linear")
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "sweep_curves.png"), dpi=100)


if __name__ == "__main__":
    sys.exit(main())
