"""A/B of the module's CPU training step (GaussianMixtureVQ(32, K), (64, 32, 4, 4) batch, Adam), each
tree in a process of its own, alternating: this checkout against OLD, a checkout of an earlier commit
(``git worktree add OLD 037da13``). Per run: median and min ms of 40 steps after 5, the page faults
per step, and the peak RSS of one fwd+bwd of gmvq at (16384, 2048, 32) in a fresh process.

    python ab_step.py OLD [--rounds 3] [--codebook-sizes 512,2048] [--malloc-keep]

--malloc-keep: glibc told to keep freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so
that no step faults pages back in: the compute alone."""
import argparse
import os
import subprocess
import sys

STEP = r"""
import os, sys, time, resource
os.environ["TRITON_INTERPRET"] = "0"
import torch, gmvq_kernels as gk
K = int(sys.argv[1])
torch.manual_seed(0)
latents = torch.randn(64, 32, 4, 4)
vq = gk.GaussianMixtureVQ(32, K, seed=0, accept_image_fmap=True)
opt = torch.optim.Adam(vq.parameters(), lr=1e-3)
def step():
    z = latents.clone().requires_grad_(True)
    q, _, loss = vq(z)[:3]
    (q.square().mean() + loss.sum()).backward()
    opt.step(); opt.zero_grad()
for _ in range(5): step()
ts = []
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 40
ts.sort()
print(f"{ts[20] * 1e3:.2f} {ts[0] * 1e3:.2f} {faults:.0f}")
"""

PEAK = r"""
import os, resource
os.environ["TRITON_INTERPRET"] = "0"
import torch, gmvq_kernels as gk
g = torch.Generator().manual_seed(0)
x = torch.randn(16384, 32, generator=g, requires_grad=True)
means = torch.randn(2048, 32, generator=g, requires_grad=True)
log_var = torch.zeros(2048, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = gk.gmvq(x, means, log_var, tau=0.5, seed=1)
(out.quantized.square().sum() + out.latent_nll.sum() + out.agg_posterior.square().sum()).backward()
print(f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024:.0f}")
"""


def run(tree, code, *args, env):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env=dict(env, PYTHONPATH=tree)).stdout.split()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--codebook-sizes", default="512,2048")
    p.add_argument("--malloc-keep", action="store_true")
    args = p.parse_args()
    env = dict(os.environ)
    if args.malloc_keep:
        env.update(MALLOC_MMAP_THRESHOLD_="1073741824", MALLOC_TRIM_THRESHOLD_="4294967295")
    new = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    trees = {"old": os.path.abspath(args.old), "new": new}
    for K in args.codebook_sizes.split(","):
        for r in range(args.rounds):
            row = {name: run(tree, STEP, K, env=env) for name, tree in trees.items()}
            print(f"K={K} round {r}: " + "; ".join(f"{name} median {m} min {lo} ms, {f} faults/step"
                                                  for name, (m, lo, f) in row.items()), flush=True)
    for name, tree in trees.items():
        print(f"peak RSS of one fwd+bwd at (16384, 2048, 32), {name}: +{run(tree, PEAK, env=env)[0]} MiB")


if __name__ == "__main__":
    main()
