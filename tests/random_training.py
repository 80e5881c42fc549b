"""Random short training runs of ``GaussianMixtureVQ``: random module options (codebook size, dimension,
τ, hard or soft, initial σ², learned or fixed variance, learned prior, objective, β, γ, shared or
per-code variance, noise injection, k-means initialisation, padding masks, heads (shared or separate
codebooks) or codebook_dim, bf16
autocast around the forward or the whole step) on clustered data at random scales, a few Adam steps
each with a reconstruction stand-in; prints every run whose loss, output, parameter gradients or the
gradient reaching the encoder (the latents') stop being finite, with what reproduces it. A developer's tool beside
``tests/random_sweep.py`` (which checks single calls against float64; this one checks what a training
loop meets: the module's own loss, parameters that move, codes that drift out of reach), not part of
the suite:

    python tests/random_training.py --runs 40 --seed 1   # impl="torch" (the CPU path), ~30 s
    python tests/random_training.py --runs 6 --impl triton --rows 32 --steps 5   # kernels (interpreter), ~3 min

Its first run (2026-12-02) found 15 of 40 runs with NaN gradients and a finite loss, most at the first
step: the KL's torch.xlogy(q̄, q̄) has a −inf gradient where a code's q̄ is exactly 0 (README, "A code
out of reach"); none since (README, "Random training runs").
"""
import argparse
import math
import os
import random
import sys


def options(rng):
    """(dim, codebook_size, GaussianMixtureVQ keywords, data scale, clusters, learning rate)."""
    kw = dict(tau=rng.choice([0.1, 0.5, 1.0]), hard=rng.random() < 0.5,
              init_log_var=rng.choice([-6.0, math.log(0.1), 0.0, 2.0]), learnable_prior=rng.random() < 0.5,
              objective=rng.choice(["albo", "elbo"]), beta=rng.choice([1.0, 5.0]),
              per_component_variance=rng.random() < 0.7, learn_variance=rng.random() < 0.8,
              gamma=rng.choice([0.0, 1.0, 10.0]), noise_injection=rng.random() < 0.2,
              kmeans_init=rng.random() < 0.2)
    return (rng.choice([2, 8, 32]), rng.choice([2, 16, 256, 1024]), kw, rng.choice([0.01, 1.0, 30.0]),
            rng.choice([1, 4, 64]), rng.choice([1e-3, 1e-2, 1e-1]))


def train(torch, gk, rng, run, impl, rows, steps):
    """One run: None if every step stayed finite, else what went wrong and where."""
    D, K, kw, scale, clusters, lr = options(rng)
    # projections in two runs of five: heads, or a narrower codebook_dim (from the run number, as below);
    # separate codebooks for two heads in a third (since 2026-12-06)
    kw.update([dict(heads=2), dict(codebook_dim=max(1, D // 2)), dict(heads=2, separate_codebook_per_head=True),
               {}, {}][run % 5])
    torch.manual_seed(run)
    vq = gk.GaussianMixtureVQ(D, K, impl=impl, seed=run, **kw)
    centers = torch.randn(clusters, D) * scale
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    amp = rng.random() < 0.2  # bf16 autocast around the forward, as a mixed-precision training step
    # in every other such run the backward too, as many training loops call it (from the run number: the
    # draws of rng, and so every run's options, stay those of earlier versions)
    backward_in_amp = amp and run % 2 == 0
    case = dict(run=run, dim=D, codebook_size=K, scale=scale, clusters=clusters, lr=lr, amp=amp,
                backward_in_amp=backward_in_amp, **kw)
    for step in range(steps):
        x = centers[torch.randint(0, clusters, (rows,))] + 0.05 * scale * torch.randn(rows, D)
        if rng.random() < 0.1:  # now and then a batch far off the data's scale
            x = x * rng.choice([1e-3, 1e3])
        # the encoder's output: its gradient is what the encoder trains on; now and then rows masked out
        x = x.requires_grad_()
        mask = torch.rand(rows) < 0.8 if rng.random() < 0.2 else None
        if mask is not None:
            mask[0] = True  # at least one kept row
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            quantized, _, loss = vq(x, mask=mask)
            # a reconstruction stand-in, so the gradient of quantized flows as a decoder's would
            total = loss + (quantized - x.detach()).square().mean()
            if backward_in_amp:
                total.backward()
        if not torch.isfinite(loss):
            return case, f"loss {loss.item()} at step {step}"
        if not torch.isfinite(quantized).all():
            return case, f"non-finite quantized at step {step}"
        if not backward_in_amp:
            total.backward()
        bad = [n for n, p in vq.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not torch.isfinite(x.grad).all():
            bad.append("x")
        if bad:
            return case, f"non-finite gradients of {bad} at step {step} (loss {loss.item():.6g})"
        opt.step()
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["torch", "triton", "reference"], default="torch")
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rows", type=int, default=256, help="latent vectors per batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # the interpreter only for the kernels: under it gumbel_noise would run its kernel too
    os.environ.setdefault("TRITON_INTERPRET", "1" if args.impl == "triton" else "0")
    import torch

    import gmvq_kernels as gk

    rng, failed = random.Random(args.seed), 0
    for run in range(args.runs):
        result = train(torch, gk, rng, run, args.impl, args.rows, args.steps)
        if result is not None:
            failed += 1
            print(f"FAIL {result[0]}\n     {result[1]}", flush=True)
    print(f"{args.runs} runs, {failed} failing ({args.impl}, seed {args.seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
