"""Quality study: GM-VQ (ALBO) against VQ-VAE baselines on real data that ships offline.

The same small convolutional autoencoder (encoder ↓4, latent dim D, codebook K, Adam, same steps and
batch) is trained with each quantizer; metrics are measured on a held-out split in eval mode
(deterministic codes, decoder fed the code means / nearest codes):

  vqvae              hard nearest code, straight-through, codebook + 0.25·commitment loss
  vqvae_ema_replace  the same with an EMA codebook (decay 0.99) and dead-code replacement
  gumbel_elbo        Gumbel-softmax over the mixture logits with the per-sample KL (ELBO)
  gmvq               GM-VQ: ALBO with β = 1 (aggregated-posterior KL)
  gmvq_entropy       GM-VQ with β = 2 (the paper's "+ Entropy")

Every method optimises recon + its own terms, with recon = Σ_pixels (x − x̂)² / (2σ_x²) per image spread
over its latent vectors (σ_x² = 0.01), so that recon, the latent term (≈ D/2 nats per vector) and the
KL (≤ log K) are on one scale. The mixture methods use the paper's fixed shared variance σ_z² = 0.1 and
straight-through hard samples with τ annealed exponentially from 1.0 to 0.3 over training, and a
randomly initialised codebook (``--kmeans-init``: k-means on the first batch of encoder outputs instead,
which collapsed GM-VQ on digits in 3 of 4 seeds; see benchmarks/README.md). Hyper-parameters are fixed
once for all datasets; ``--sigma-z2`` and ``--kmeans-init`` exist for ablations.

Datasets: ``digits`` (scikit-learn's 8×8 digits) and ``patches`` (16×16 RGB patches of the two
photographs scikit-learn ships), or ``--data PATH.npy`` with images (M, C, H, W) or (M, H, W) in [0, 1],
H and W multiples of 4.

    python benchmarks/quality.py                 # full default run (2 idle CPU cores: about 4 minutes)
    python benchmarks/quality.py --smoke         # seconds, CI
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

import gmvq_kernels as gk

METHODS = ("vqvae", "vqvae_ema_replace", "gumbel_elbo", "gmvq", "gmvq_entropy")
SIGMA_X2 = 0.01
# fixed shared σ_z² of the mixture methods (the paper's setting); picked from {1.0, 0.1} on digits at
# 500 steps (at 1.0 GM-VQ used 7 of 128 codes; both with k-means init), then fixed for every dataset
SIGMA_Z2 = 0.1
TAU_START, TAU_END = 1.0, 0.3
COMMITMENT = 0.25
_MIXTURE = dict(sigma_z2=SIGMA_Z2, tau_end=TAU_END, gamma=1.0, hard=True, noise_injection=False, kmeans_init=False)
# each method's hyper-parameters in this study (quality_sweep.py tunes them): commitment weight; EMA
# decay and the steps after which an unused code is replaced; the mixture methods' fixed σ_z², τ's end
# value, the ALBO/ELBO weights γ, β, straight-through hard or soft samples, and noise injection
DEFAULTS = {
    "vqvae": dict(commitment=COMMITMENT),
    "vqvae_ema_replace": dict(commitment=COMMITMENT, decay=0.99, dead_after=100),
    "gumbel_elbo": dict(_MIXTURE, beta=1.0),
    "gmvq": dict(_MIXTURE, beta=1.0),
    "gmvq_entropy": dict(_MIXTURE, beta=2.0),
}


# ----------------------------------------------------------------------------------------- data
def load_dataset(name, seed=0, n_patches=5000):
    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits
        imgs = load_digits().images.astype(np.float32) / 16.0          # (1797, 8, 8)
        imgs = imgs[:, None]
    elif name == "patches":
        from sklearn.datasets import load_sample_images
        photos = [im.astype(np.float32) / 255.0 for im in load_sample_images().images]
        out = []
        for i in range(n_patches):
            ph = photos[i % len(photos)]
            y, x = rng.integers(0, ph.shape[0] - 16), rng.integers(0, ph.shape[1] - 16)
            out.append(ph[y:y + 16, x:x + 16].transpose(2, 0, 1))
        imgs = np.stack(out)                                          # (M, 3, 16, 16)
    else:
        imgs = np.load(name).astype(np.float32)
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        if imgs.ndim != 4 or imgs.shape[2] % 4 or imgs.shape[3] % 4:
            raise ValueError(f"--data must hold images (M, C, H, W) or (M, H, W) with H, W multiples of 4; "
                             f"got shape {imgs.shape}")
        if imgs.min() < 0 or imgs.max() > 1:
            raise ValueError(f"--data values must lie in [0, 1]; got [{imgs.min()}, {imgs.max()}]")
    perm = rng.permutation(len(imgs))
    n_test = max(1, len(imgs) // 5)
    data = torch.from_numpy(imgs[perm])
    return data[n_test:], data[:n_test]


# ---------------------------------------------------------------------------------------- model
class AutoEncoder(nn.Module):
    def __init__(self, channels, dim):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, dim, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, 64, 1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Sigmoid())


class HardVQ(nn.Module):
    """VQ-VAE quantizer: nearest code, straight-through; optional EMA codebook and dead-code replacement."""

    def __init__(self, dim, K, ema=False, decay=0.99, dead_after=100, commitment=COMMITMENT, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ema, self.decay, self.dead_after, self.commitment = ema, decay, dead_after, commitment
        self.codebook = nn.Parameter(torch.randn(K, dim, generator=g) / math.sqrt(dim), requires_grad=not ema)
        self.register_buffer("cluster_size", torch.ones(K))
        self.register_buffer("embed_sum", self.codebook.detach().clone())
        self.register_buffer("last_used", torch.zeros(K, dtype=torch.long))
        self.step = 0
        self.g = g

    def forward(self, z):                                        # z: (B, D, H, W)
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])
        codes = torch.cdist(flat, self.codebook).argmin(1)
        e = self.codebook[codes]
        if self.training:
            self.step += 1
            self.last_used[codes] = self.step
            if self.ema:
                with torch.no_grad():
                    onehot = torch.nn.functional.one_hot(codes, self.codebook.shape[0]).float()
                    self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                    self.embed_sum.mul_(self.decay).add_(onehot.T @ flat.detach(), alpha=1 - self.decay)
                    n = self.cluster_size.sum()
                    size = (self.cluster_size + 1e-5) / (n + 1e-5 * len(self.cluster_size)) * n
                    self.codebook.copy_(self.embed_sum / size[:, None])
                    dead = (self.step - self.last_used) > self.dead_after
                    if dead.any():  # replace with random encoder outputs of this batch
                        pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), generator=self.g)
                        self.codebook[dead] = flat.detach()[pick]
                        self.embed_sum[dead] = flat.detach()[pick]
                        self.cluster_size[dead] = 1.0
                        self.last_used[dead] = self.step
                aux = self.commitment * ((flat - e.detach()) ** 2).sum(1).mean()
            else:
                aux = (((flat.detach() - e) ** 2).sum(1).mean()
                       + self.commitment * ((flat - e.detach()) ** 2).sum(1).mean())
        else:
            aux = torch.zeros(())
        q = flat + (e - flat).detach()
        return q.reshape(*z.movedim(1, -1).shape).movedim(-1, 1), codes, aux


class MixtureVQ(nn.Module):
    """GM-VQ / Gumbel quantizer: gk.GaussianMixtureVQ with the paper's fixed shared σ_z², returning
    (quantized, codes, loss terms) like HardVQ, and keeping the last batch's q̄ perplexity."""

    def __init__(self, dim, K, objective, *, beta, gamma, sigma_z2, tau_end, hard, noise_injection, kmeans_init,
                 seed=0):
        super().__init__()
        # γ = β = 1 are the paper's ALBO weights: this study puts the reconstruction in nats per latent vector
        self.tau_end = tau_end
        self.vq = gk.GaussianMixtureVQ(dim, K, hard=hard, tau=TAU_START, beta=beta, gamma=gamma, objective=objective,
                                       noise_injection=noise_injection, accept_image_fmap=True,
                                       kmeans_init=kmeans_init, per_component_variance=False,
                                       learn_variance=False, init_log_var=math.log(sigma_z2), seed=seed,
                                       return_loss_breakdown=True)
        self.last_perplexity = float("nan")

    def forward(self, z):
        out = self.vq(z)
        self.last_perplexity = out.terms["perplexity"].item()
        return out.quantized, out.codes, out.loss


def make_quantizer(method, dim, K, seed, cfg):
    """cfg: the method's hyper-parameters (the keys of DEFAULTS[method])."""
    if method in ("vqvae", "vqvae_ema_replace"):
        return HardVQ(dim, K, ema=method == "vqvae_ema_replace", seed=seed, **cfg)
    objective = "elbo" if method == "gumbel_elbo" else "albo"
    if method in ("gumbel_elbo", "gmvq", "gmvq_entropy"):
        return MixtureVQ(dim, K, objective, **cfg, seed=seed)
    raise ValueError(method)


def codebook_param(quant):
    """The trainable codebook (None for the EMA codebook, which has no gradient)."""
    p = quant.vq.means if isinstance(quant, MixtureVQ) else quant.codebook
    return p if p.requires_grad else None


# ------------------------------------------------------------------------------------- training
def recon_nats(x, xr, latents_per_image):
    """Gaussian decoder NLL per latent vector (constants dropped): Σ_pix (x − x̂)²/(2σ²) / latents."""
    return ((x - xr) ** 2).flatten(1).sum(1).mean() / (2 * SIGMA_X2) / latents_per_image


@torch.no_grad()
def evaluate(ae, quant, data, K):
    ae.eval(), quant.eval()
    mses, codes = [], []
    for batch in data.split(512):
        zq, c, _ = quant(ae.encoder(batch))
        mses.append(((ae.decoder(zq) - batch) ** 2).flatten(1).mean(1))
        codes.append(c)
    ae.train(), quant.train()
    _, ppl, used = gk.codebook_usage(torch.cat(codes), K)
    return torch.cat(mses).mean().item(), ppl, used


def train_one(method, train, test, *, dim, K, steps, batch, seed, log_every, cfg):
    """Train one autoencoder with ``method`` (hyper-parameters ``cfg``) and evaluate it on ``test``
    (a tensor, or a dict of named splits). Returns (metrics, curve, (ae, quant)); metrics per split
    when ``test`` is a dict. The curve logs, every ``log_every`` steps: train MSE, the batch's code
    perplexity and codes used, the gradient norm of the codebook (trainable codebooks) and, for the
    mixture methods, the perplexity exp H(q̄) of the batch's aggregated posterior."""
    torch.manual_seed(seed)
    ae = AutoEncoder(train.shape[1], dim)
    quant = make_quantizer(method, dim, K, seed, cfg)
    book = codebook_param(quant)
    opt = torch.optim.Adam(list(ae.parameters()) + [p for p in quant.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    lat_per_img = (train.shape[2] // 4) * (train.shape[3] // 4)
    curve = []
    for step in range(steps):
        if isinstance(quant, MixtureVQ):
            quant.vq.tau = gk.tau_schedule(step, start=TAU_START, end=quant.tau_end, steps=steps)
        x = train[torch.randint(0, len(train), (batch,), generator=g)]
        zq, codes, aux = quant(ae.encoder(x))
        xr = ae.decoder(zq)
        loss = recon_nats(x, xr, lat_per_img) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step % log_every == 0 or step == steps - 1:
            _, ppl, used = gk.codebook_usage(codes.detach(), K)
            point = dict(step=step, train_mse=((x - xr) ** 2).mean().item(), perplexity=ppl, codes_used=used)
            if book is not None and book.grad is not None:
                point["codebook_grad_norm"] = book.grad.norm().item()
            if isinstance(quant, MixtureVQ):
                point["agg_posterior_perplexity"] = quant.last_perplexity
            curve.append(point)
        opt.step()
    metrics = {name: dict(zip(("mse", "perplexity", "codes_used"), evaluate(ae, quant, split, K)))
               for name, split in (test.items() if isinstance(test, dict) else [("test", test)])}
    return (metrics if isinstance(test, dict) else metrics["test"]), curve, (ae, quant)


# the default run (2 datasets × 5 methods × 2 seeds × 1200 steps, batch 128) took 185 s on 2 idle CPU cores
# (2026-11-30)
DEFAULT_RUN = dict(seconds=185.0, runs=20, steps=1200, batch=128)


def expected_seconds(args):
    """A first guess from the measured default run, scaled by training steps × batch; progress lines
    replace it with an ETA from the measured pace."""
    runs = len(args.datasets) * len(args.methods) * args.seeds
    d = DEFAULT_RUN
    return d["seconds"] * (runs * args.steps * args.batch) / (d["runs"] * d["steps"] * d["batch"])


def method_config(method, args):
    """DEFAULTS[method] with the command line's mixture options (--sigma-z2, --kmeans-init) applied."""
    cfg = dict(DEFAULTS[method])
    if "sigma_z2" in cfg:
        cfg.update(sigma_z2=args.sigma_z2, kmeans_init=args.kmeans_init)
    return cfg


def run(args):
    datasets = args.datasets
    results, curves, models = {}, {}, {}
    t0 = time.time()
    total = len(datasets) * len(args.methods) * args.seeds
    done = 0
    for ds in datasets:
        train, test = load_dataset(ds, seed=0)
        if args.smoke:
            train, test = train[:256], test[:64]
        results[ds] = {}
        for method in args.methods:
            runs = []
            for seed in range(args.seeds):
                r, curve, model = train_one(method, train, test, dim=args.dim, K=args.codebook_size, steps=args.steps,
                                            batch=args.batch, seed=seed, log_every=max(1, args.steps // 30),
                                            cfg=method_config(method, args))
                runs.append(r)
                done += 1
                elapsed = time.time() - t0
                print(f"  [{done}/{total}] {ds} {method} seed {seed}: test MSE {r['mse']:.5f}, {r['codes_used']} codes "
                      f"used ({elapsed:.0f} s elapsed, ETA {elapsed / done * (total - done):.0f} s)", flush=True)
                if seed == 0:
                    curves[(ds, method)] = curve
                    models[(ds, method)] = model
            agg = dict(summarize(runs), runs=runs)
            results[ds][method] = agg
            print(f"{ds:>8} {method:>18}: mse {agg['mse']:.5f} ± {agg['mse_std']:.5f}  "
                  f"perplexity {agg['perplexity']:7.2f} ± {agg['perplexity_std']:.2f}  "
                  f"codes used {agg['codes_used']:6.1f}  ({time.time() - t0:.0f} s)", flush=True)
    return results, curves, models, time.time() - t0


def summarize(metrics):
    """Mean and std over seeds of each metric (mse, perplexity, codes_used) of a list of per-run dicts."""
    out = {}
    for key in ("mse", "perplexity", "codes_used"):
        vals = np.array([m[key] for m in metrics], dtype=np.float64)
        out[key], out[key + "_std"] = float(vals.mean()), float(vals.std())
    return out


def metric_cells(r):
    """The markdown cells "MSE ± std | perplexity ± std | codes used ± std" of a ``summarize`` result."""
    return (f"{r['mse']:.5f} ± {r['mse_std']:.5f} | {r['perplexity']:.1f} ± {r['perplexity_std']:.1f} | "
            f"{r['codes_used']:.1f} ± {r['codes_used_std']:.1f}")


def print_table(results, args, seconds, file=sys.stdout):
    print(f"\n# quality: K={args.codebook_size}, D={args.dim}, steps={args.steps}, batch={args.batch}, "
          f"seeds={args.seeds}, {seconds:.0f} s", file=file)
    print(f"| dataset | method | test MSE (lower is better) | perplexity (higher is better, max {args.codebook_size}) "
          f"| codes used (higher is better, of {args.codebook_size}) |", file=file)
    print("|---|---|---|---|---|", file=file)
    for ds, per in results.items():
        for m, r in per.items():
            print(f"| {ds} | {m} | {metric_cells(r)} |", file=file)


def plot(curves, models, datasets, test_sets, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for (d, m), c in curves.items():
            if d != ds:
                continue
            steps = [p["step"] for p in c]
            axes[i][0].plot(steps, [p["train_mse"] for p in c], label=m)
            axes[i][1].plot(steps, [p["perplexity"] for p in c], label=m)
        axes[i][0].set(title=f"{ds}: train MSE", yscale="log", xlabel="step")
        axes[i][1].set(title=f"{ds}: batch code perplexity", xlabel="step")
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "quality_curves.png"), dpi=100)

    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 2.2 * len(datasets) * 1.6), squeeze=False)
    for i, ds in enumerate(datasets):
        x = test_sets[ds][:8]
        rows = [x]
        with torch.no_grad():
            for m in METHODS:
                if (ds, m) in models:
                    ae, quant = models[(ds, m)]
                    ae.eval(), quant.eval()
                    rows.append(ae.decoder(quant(ae.encoder(x))[0]))
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)   # (C, rows*H, 8*W)
        img = grid.permute(1, 2, 0).numpy()
        axes[i][0].imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        axes[i][0].set_title(f"{ds}: input, then " + ", ".join(m for m in METHODS if (ds, m) in models), fontsize=8)
        axes[i][0].axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "quality_reconstructions.png"), dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="PATH.npy of images (M, C, H, W) or (M, H, W) in [0, 1]; replaces the datasets")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--datasets", nargs="+", default=["digits", "patches"], choices=["digits", "patches"])
    p.add_argument("--sigma-z2", type=float, default=SIGMA_Z2, help="fixed σ_z² of the mixture methods")
    p.add_argument("--kmeans-init", action="store_true", help="k-means-initialise the mixture codebooks")
    p.add_argument("--out-dir", help="folder for the JSON, the table and the plots "
                   "(default: results/quality-<date>-<time> in the current folder)")
    p.add_argument("--out", help="write results as JSON here instead of OUT_DIR/quality.json")
    p.add_argument("--plots", help="folder for quality_curves.png and quality_reconstructions.png (default OUT_DIR)")
    p.add_argument("--smoke", action="store_true", help="a few steps on a subset (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds, args.codebook_size, args.batch = 20, 1, 16, 32
    if args.data:
        args.datasets = [args.data]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out_dir = args.out_dir or os.path.join("results", time.strftime("quality-%Y-%m-%d-%H%M%S"))
    args.out = args.out or os.path.join(out_dir, "quality.json")
    args.plots = args.plots or out_dir
    runs = len(args.datasets) * len(args.methods) * args.seeds
    print(f"GM-VQ quality study: {len(args.methods)} methods ({', '.join(args.methods)}) × datasets "
          f"{', '.join(args.datasets)} × {args.seeds} seed(s) = {runs} training runs of {args.steps} steps "
          f"(K = {args.codebook_size}, D = {args.dim}, batch {args.batch}), on the CPU.\n"
          f"Expected about {expected_seconds(args):.0f} s on 2 idle CPU cores "
          f"(the default run took {DEFAULT_RUN['seconds']:.0f} s); results go to {out_dir}/", flush=True)
    results, curves, models, seconds = run(args)
    print_table(results, args, seconds)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "quality_table.md"), "w") as fh:
        print_table(results, args, seconds, file=fh)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(methods=results[args.datasets[0]], datasets=results,
                           config=dict(steps=args.steps, seeds=args.seeds, codebook_size=args.codebook_size,
                                       dim=args.dim, batch=args.batch, sigma_x2=SIGMA_X2, tau_start=TAU_START,
                                       methods={m: method_config(m, args) for m in args.methods},
                                       seconds=seconds, torch=torch.__version__)), fh, indent=1)
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        tests = {ds: load_dataset(ds, seed=0)[1] for ds in args.datasets}
        plot(curves, models, args.datasets, tests, args.plots)
    print(f"results: {args.out}, quality_table.md beside it, plots in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
