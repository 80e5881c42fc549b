"""GPU probe of 2026-12-04, run once on the H200 before gpu_check.sh (kept as the record; benchmarks/README.md,
"GPU results ... 2026-12-04"): which fused-backward cases fault (each in a child process with
CUDA_LAUNCH_BLOCKING=1), and the NaN check's two noise paths (seeded against gumbel_noise's tensor). As run, but for this docstring and an unused import dropped."""
import os, subprocess, sys, json
import torch


CASES = [  # (N, K, D, hard, tau, dtype)
    (1000, 3000, 100, True, 0.5, "bfloat16"),
    (1000, 3000, 100, False, 0.5, "bfloat16"),
    (1024, 3072, 100, True, 0.5, "bfloat16"),
    (2048, 4096, 64, True, 0.5, "bfloat16"),
    (1000, 500, 100, True, 0.5, "bfloat16"),
]


class Sync:
    def __init__(self, name, k):
        self.name, self.k = name, k

    def __getitem__(self, grid):
        def launch(*a, **kw):
            r = self.k[grid](*a, **kw)
            try:
                torch.cuda.synchronize()
            except Exception as e:
                print(json.dumps(dict(fault=self.name, grid=str(grid), kw={k: str(v) for k, v in kw.items()},
                                      err=str(e)[:200])), flush=True)
                raise
            return r
        return launch


def run_case(i):
    from gmvq_kernels import backward, forward, config, testing
    import gmvq_kernels as gk
    for mod in (backward, forward):
        for name in dir(mod):
            obj = getattr(mod, name)
            if name.startswith("_gmvq") and hasattr(obj, "run"):
                setattr(mod, name, Sync(name, obj))
    N, K, D, hard, tau, dt = CASES[i]
    os.environ[config.FUSED_BACKWARD_ENV] = "1"
    x, m, lv, lp = testing.make_inputs(N, K, D, dtype=getattr(torch, dt), prior=True, device="cuda", seed=N + K + D)
    leaves = [t.detach().clone().requires_grad_() for t in (x, m, lv, lp)]
    out = gk.gmvq(*leaves, impl="triton", tau=tau, hard=hard, seed=5)
    loss = sum(getattr(out, f).double().sum() for f in ("quantized", "log_likelihood", "latent_nll", "mixture_var",
                                                         "entropy")) + (out.agg_posterior.double() * torch.arange(K, device="cuda")).sum()
    loss.backward()
    torch.cuda.synchronize()
    print(json.dumps(dict(case=CASES[i], ok=True, dx_finite=bool(leaves[0].grad.isfinite().all()))), flush=True)


def nan_noise():
    import gmvq_kernels as gk
    from gmvq_kernels import testing
    N, K, D = 9, 37, 6
    for dt in (torch.float32, torch.bfloat16):
        x, m, lv, lp = testing.make_inputs(N, K, D, prior=True, dtype=dt, device="cuda")
        xb = x.clone(); xb[1, 2], xb[4, 0], xb[7] = float("nan"), float("inf"), 3e19
        kw = dict(tau=0.7, hard=False, seed=5, impl="triton")
        a = gk.gmvq(xb, m, lv, lp, **kw)
        b = gk.gmvq(x, m, lv, lp, **kw)
        c = gk.gmvq(x, m, lv, lp, **dict(kw, noise=gk.gumbel_noise(N, K, 5, device="cuda")))
        good = [0, 2, 3, 5, 6, 8]
        row = {}
        for f in ("quantized", "log_likelihood", "latent_nll", "mixture_var", "entropy"):
            A, B, C = (getattr(o, f)[good].double() for o in (a, b, c))
            row[f] = dict(bad_vs_seeded=(A - B).abs().max().item(), seeded_vs_explicit=(B - C).abs().max().item())
        print(json.dumps(dict(nan_noise=str(dt), **row)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run_case(int(sys.argv[1]))
    else:
        print(os.popen("which compute-sanitizer; ls /usr/local/cuda*/bin 2>/dev/null | head -3").read(), flush=True)
        try:
            nan_noise()
        except Exception as e:
            print("nan_noise error", e)
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONPATH=os.getcwd())
        for i in range(len(CASES)):
            r = subprocess.run([sys.executable, __file__, str(i)], env=env, capture_output=True, text=True, timeout=60)
            print(i, CASES[i], "rc", r.returncode, r.stdout[-1500:], r.stderr[-600:] if r.returncode else "", flush=True)
