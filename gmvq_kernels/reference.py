"""Pure-PyTorch GM-VQ: the ground truth every test compares against (DESIGN.md §1).

Readable first: it builds every N×K tensor (distances, logits, q, y) in the dtype of its inputs, which is
exactly what makes it slow and memory hungry at scale. Autograd differentiates it; the kernels' hand
derived backward (DESIGN.md §2) is checked against this.
"""
import math
from typing import NamedTuple, Optional

import torch

from .noise import gumbel_noise

LOG_2PI = math.log(2.0 * math.pi)


class GMVQOutput(NamedTuple):
    quantized: torch.Tensor      # (N, D), dtype of x
    codes: torch.Tensor          # (N,) int64
    log_likelihood: torch.Tensor  # (N,)
    agg_posterior: torch.Tensor  # (K,)
    latent_nll: torch.Tensor     # (N,)
    mixture_var: torch.Tensor    # (N,)
    entropy: torch.Tensor        # (N,)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-row / per-code statistics are fp32, or fp64 when the inputs are fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_prior_probs(log_prior: Optional[torch.Tensor], K: int, like: torch.Tensor) -> torch.Tensor:
    """log π (K,) in the dtype and device of ``like``: log_softmax of the prior logits, or −log K."""
    if log_prior is None:
        return torch.full((K,), -math.log(K), dtype=like.dtype, device=like.device)
    return torch.log_softmax(log_prior.to(like.dtype), dim=0)


def component_terms(log_var, log_pi, D: int):
    """Per-code constants of the logits ℓ_nk = b_k − d_nk·a_k (differentiable, O(K)):
    a_k = 1/(2σ_k²), b_k = log π_k − (D/2)(λ_k + log 2π), v_k = σ_k²."""
    a = 0.5 * torch.exp(-log_var)
    b = log_pi - 0.5 * D * (log_var + LOG_2PI)
    return a, b, torch.exp(log_var)


def sq_distances(x, means):
    """d_nk = ||x_n − μ_k||², as ||x||² + ||μ||² − 2 x·μ clamped at 0 (what the kernels compute)."""
    d = (x * x).sum(1, keepdim=True) + (means * means).sum(1)[None, :] - 2.0 * (x @ means.T)
    return d.clamp_min(0.0)


def gmvq_reference(x, means, log_var, log_prior=None, *, tau: float = 1.0, hard: bool = False,
                   seed: int = 0, noise: Optional[torch.Tensor] = None) -> GMVQOutput:
    """GM-VQ forward in eager PyTorch, computed in the inputs' dtype. Inputs are assumed validated
    (see ``gmvq_kernels.gmvq``). ``agg_posterior`` is the local mean q̄ over these N rows."""
    N, D = x.shape
    K = means.shape[0]
    dt = x.dtype
    out_dt = stats_dtype(dt)
    lv = log_var.to(dt)
    a, b, v = component_terms(lv, log_prior_probs(log_prior, K, lv), D)
    if noise is None:
        noise = gumbel_noise(N, K, seed, device=x.device)
    d = sq_distances(x, means)
    logits = b[None, :] - d * a[None, :]                      # ℓ = log π + log N(x; μ, σ²I)
    log_q = torch.log_softmax(logits, dim=1)
    q = log_q.exp()
    noisy = logits + noise.to(dt)
    y_soft = torch.softmax(noisy / tau, dim=1)
    if hard:  # straight-through: forward value one-hot, gradient of the soft sample
        y_hard = torch.nn.functional.one_hot(noisy.argmax(1), K).to(dt)
        y = y_hard - y_soft.detach() + y_soft
    else:
        y = y_soft
    return GMVQOutput(
        quantized=y @ means,
        codes=logits.argmax(1),
        log_likelihood=torch.logsumexp(logits, dim=1).to(out_dt),
        agg_posterior=q.mean(0).to(out_dt),
        latent_nll=(y * d * a[None, :]).sum(1).to(out_dt),
        mixture_var=(y * v[None, :]).sum(1).to(out_dt),
        entropy=-(q * log_q).sum(1).to(out_dt),
    )
