"""Pure-PyTorch GM-VQ: the ground truth every test compares against (docs/design.md §1).

Readable first: it builds every N×K tensor (distances, logits, q, y), which is exactly what makes it slow
and memory hungry at scale. Autograd differentiates it; the kernels' hand
derived backward (docs/design.md §2) is checked against this.
"""
import math
from typing import Optional

import torch

from .noise import gumbel_noise
from .spec import GMVQOutput, stats_dtype, with_fields


def sq_distances(x, means):
    """d_nk = ||x_n − μ_k||², as ||x||² + ||μ||² − 2 x·μ clamped at 0 (what the kernels compute).
    In place on the product: no N×K temporary, and no N×K bias for addmm to copy (torch.compile fuses
    the rest into the ops that follow)."""
    return (x @ means.T).mul_(-2.0).add_((x * x).sum(1, keepdim=True)).add_((means * means).sum(1)).clamp_min_(0.0)


def _distances_logits(x, means, lv, log_pi):
    """(d, ℓ, d·a) with ℓ = log π + log N(x; μ, σ²I) = log π − d/(2σ²) − (D/2)(λ + log 2π), written
    b − d·a with the per-code a = 1/(2σ²) and b = log π − (D/2)(λ + log 2π) (N×K work: one product)."""
    d = sq_distances(x, means)
    D = x.shape[1]
    da = d * (0.5 * torch.exp(-lv))[None, :]
    return d, (log_pi - 0.5 * D * (lv + math.log(2 * math.pi)))[None, :] - da, da


def _log_pi(log_prior, lv):
    K = lv.shape[0]
    return torch.log_softmax(log_prior.to(lv.dtype), 0) if log_prior is not None else torch.full_like(lv, -math.log(K))


def gmvq_encode_reference(x, means, log_var, log_prior=None, *, chunk: int = 4096) -> torch.Tensor:
    """codes = argmax_k ℓ_nk (N,) int64, computed like ``gmvq_reference``'s codes but only the logits
    of ``chunk`` rows at a time (memory O(chunk·K)); −1 for a row whose x is not finite."""
    dt = stats_dtype(x.dtype)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        means, lv = means.to(dt), log_var.to(dt)
        log_pi = _log_pi(log_prior, lv)
        out = []
        for rows in x.split(chunk):
            rows = rows.to(dt)
            codes = _distances_logits(rows, means, lv, log_pi)[1].argmax(1)
            out.append(codes.masked_fill(~((rows * rows).sum(1) < math.inf), -1))
    return torch.cat(out)


def gmvq_reference(x, means, log_var, log_prior=None, *, tau: float = 1.0, hard: bool = False,
                   seed: int = 0, noise: Optional[torch.Tensor] = None) -> GMVQOutput:
    """GM-VQ forward in eager PyTorch, computed in fp32 (fp64 for fp64 inputs); ``quantized`` comes back
    in the dtype of x, the statistics in the computation dtype. Inputs are assumed validated
    (see ``gmvq_kernels.gmvq``). ``agg_posterior`` is the local mean q̄ over these N rows."""
    return reference_forward(x, means, log_var, log_prior, tau, hard, seed, noise)[0]


def reference_forward(x, means, log_var, log_prior, tau, hard, seed, noise):
    """(GMVQOutput, sample_codes): sample_codes = argmax_k(ℓ_nk + g_nk), the code of the hard sample
    (−1 where the row is not finite), or None when soft."""
    if x.device.type == "meta":  # shapes only (no autocast on meta)
        return _reference(x, means, log_var, log_prior, tau, hard, seed, noise)
    # autocast would turn the fp32 matmuls back into half ones: the inputs' rounding is the only one
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _reference(x, means, log_var, log_prior, tau, hard, seed, noise)


def reference_forward_blocks(x, means, log_var, log_prior, tau, hard, seed, noise, rows: int):
    """``reference_forward`` on blocks of ``rows`` rows: the same values (each block draws its own rows
    of the noise, ``gumbel_noise``'s row_offset), with q̄ summed block by block (ulps from one mean).
    On a CPU each block's N×K temporaries, and in the backward their gradients, then stay in cache
    (one (rows, K) fp32 tensor ~1 MiB at config.REFERENCE_BLOCK_ELEMS), where the whole batch's go
    to memory: see the README, "The CPU training step"."""
    N, K = x.shape[0], means.shape[0]
    if N <= rows:
        return reference_forward(x, means, log_var, log_prior, tau, hard, seed, noise)
    outs, samples = [], []
    for i in range(0, N, rows):
        n = min(rows, N - i)
        block_noise = gumbel_noise(n, K, seed, device=x.device, row_offset=i) if noise is None else noise[i:i + n]
        out, sample = reference_forward(x[i:i + n], means, log_var, log_prior, tau, hard, seed, block_noise)
        outs.append(out)
        samples.append(sample)
    fields = {f: torch.cat([getattr(o, f) for o in outs]) for f in GMVQOutput._fields if f != "agg_posterior"}
    agg = sum(o.agg_posterior * (o.codes.shape[0] / N) for o in outs)
    return GMVQOutput(agg_posterior=agg, **fields), torch.cat(samples) if hard else None


def _reference(x, means, log_var, log_prior, tau, hard, seed, noise, compute_dtype=None):
    N, D = x.shape
    K = means.shape[0]
    in_dt = x.dtype
    # fp16/bf16 inputs are computed in fp32 from their rounded values, as the kernels do (fp64 stays fp64);
    # compute_dtype: only for the benchmarks' naive baseline (benchmarks/speed.py, "naive_compile")
    dt = out_dt = compute_dtype or stats_dtype(in_dt)
    x, means = x.to(dt), means.to(dt)
    lv = log_var.to(dt)
    log_pi = _log_pi(log_prior, lv)
    if noise is None:
        noise = gumbel_noise(N, K, seed, device=x.device)
    _, logits, da = _distances_logits(x, means, lv, log_pi)
    log_q = torch.log_softmax(logits, dim=1)
    q = log_q.exp()
    noisy = logits + noise.to(dt)
    y_soft = torch.softmax(noisy / tau, dim=1)
    sample = noisy.argmax(1) if hard else None
    if hard:  # straight-through: forward value one-hot, gradient of the soft sample
        y_hard = torch.zeros_like(y_soft).scatter_(1, sample[:, None], 1.0)
        y = y_hard - y_soft.detach() + y_soft
    else:
        y = y_soft
    codes = logits.argmax(1)
    # logsumexp_k ℓ = ℓ − log q at any code; at the argmax log q ∈ [−log K, 0] is never −inf, and this
    # reuses log_softmax's sum (torch.logsumexp would be a second pass over ℓ, ~5 % of a CPU step)
    best = codes[:, None]
    out = GMVQOutput(
        quantized=(y @ means).to(in_dt),
        codes=codes,
        log_likelihood=(logits.gather(1, best) - log_q.gather(1, best))[:, 0].to(out_dt),
        agg_posterior=q.mean(0).to(out_dt),
        latent_nll=(y * da).sum(1).to(out_dt),                    # Σ_k y d/(2σ²)
        mixture_var=(y @ torch.exp(lv)).to(out_dt),               # Σ_k y σ²
        entropy=-(q * log_q).sum(1).to(out_dt),
    )
    # NaN policy (as the kernels): a row whose x is not finite, or whose ||x||² overflows, is NaN with
    # code −1; its NaN reaches q̄ through the mean
    bad = ~((x * x).sum(1) < math.inf)
    nan = float("nan")
    out = with_fields(
        out,
        quantized=out.quantized.masked_fill(bad[:, None], nan), codes=out.codes.masked_fill(bad, -1),
        **{f: getattr(out, f).masked_fill(bad, nan)
           for f in ("log_likelihood", "latent_nll", "mixture_var", "entropy")})
    return out, None if sample is None else sample.masked_fill(bad, -1)
