"""Losses and diagnostics built on the fused op's outputs: cheap torch on K- or N-vectors."""
from typing import Optional

import torch

from .checks import check_code_range, check_int, check_number
from .spec import GMVQOutput, log_prior_probs


def xlogx(p: torch.Tensor) -> torch.Tensor:
    """p·log p with 0·log 0 = 0, and a finite gradient at p = 0: log p + 1 down to the dtype's smallest
    normal number, log of that number below it. torch.xlogy(p, p)'s gradient at 0 is −inf, and q̄_k
    is exactly 0 for a code that no row reaches in fp32 (a dead or distant code: ℓ more than ~104 below
    every row's best); the op's backward then multiplies that −inf by q = 0, and every gradient of the
    step is NaN while the loss stays finite. The true contribution of such a code is 0 (q log q̄ → 0),
    which any finite value here gives."""
    return p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def kl_to_prior(agg_posterior: torch.Tensor, log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(q̄ ‖ π) = Σ_k q̄_k (log q̄_k − log π_k), with 0·log 0 = 0 and finite gradients where q̄_k = 0
    (``xlogx``)."""
    log_pi = log_prior_probs(log_prior, agg_posterior.shape[0], agg_posterior)
    return (xlogx(agg_posterior) - agg_posterior * log_pi).sum()


def variance_normaliser(out: GMVQOutput, log_var: torch.Tensor) -> torch.Tensor:
    """(D/2)·Σ_k q̄_k λ_k: the part of −log p(z|c) that ``latent_nll`` leaves out, (D/2)·log σ², charged
    under the aggregated posterior. A constant for a fixed σ²; with learned variances it must be paid,
    or every σ² grows without bound and one broad component takes all rows (seen in the quality study)."""
    D = out.quantized.shape[-1]
    return 0.5 * D * (out.agg_posterior * log_var.float().expand_as(out.agg_posterior)).sum()


def _check_weights(beta, gamma):
    check_number("beta", beta, lo=0.0)
    check_number("gamma", gamma, lo=0.0)


# The two helpers below leave out a ×1 and a +0, which are exact: the same loss and gradients, bit for bit,
# with fewer torch ops (on a GPU each is a kernel launch and ~13 µs of host time in an eager step). Not
# while torch.compile traces: a weight may be symbolic there (see check_number), and the ops get fused.
def _weighted(weight, term):
    return term if not torch.compiler.is_compiling() and weight == 1 else weight * term


def _latent_term(out, log_var):
    """mean_n latent_nll + (D/2)·Σ_k q̄_k λ_k (``variance_normaliser``; nothing added without ``log_var``)."""
    latent = out.latent_nll.mean()
    return latent if log_var is None else latent + variance_normaliser(out, log_var)


def albo_loss(out: GMVQOutput, log_prior=None, *, beta: float = 1.0, gamma: float = 1.0,
              recon: Optional[torch.Tensor] = None, log_var: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ALBO (minimised): recon + γ·(mean_n latent_nll + (D/2)·Σ_k q̄_k λ_k) + β·KL(q̄ ‖ π). β = 1 is GM-VQ,
    β > 1 "+ Entropy". Pass ``log_var`` when the variances are learned (see ``variance_normaliser``)."""
    _check_weights(beta, gamma)
    loss = _weighted(gamma, _latent_term(out, log_var)) + _weighted(beta, kl_to_prior(out.agg_posterior, log_prior))
    return loss if recon is None else recon + loss


def elbo_loss(out: GMVQOutput, log_prior=None, *, beta: float = 1.0, gamma: float = 1.0,
              recon: Optional[torch.Tensor] = None, log_var: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ELBO baseline: the aggregated KL replaced by the per-sample one,
    mean_n KL(q_n ‖ π) = −mean_n H(q_n) − Σ_k q̄_k log π_k (the mean over n of Σ_k q_nk log π_k is q̄·log π).
    ``log_var`` as for ``albo_loss``."""
    _check_weights(beta, gamma)
    log_pi = log_prior_probs(log_prior, out.agg_posterior.shape[0], out.agg_posterior)
    kl = -out.entropy.mean() - (out.agg_posterior * log_pi).sum()
    loss = _weighted(gamma, _latent_term(out, log_var)) + _weighted(beta, kl)
    return loss if recon is None else recon + loss


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """exp(H(p)) of a distribution over codes, e.g. q̄ or a normalised code histogram (finite gradients
    where p_k = 0: ``xlogx``)."""
    return torch.exp(-xlogx(probs).sum())


def codebook_usage(codes: torch.Tensor, codebook_size: int):
    """(histogram (K,) int64, perplexity of the code histogram, number of codes used)."""
    check_int("codebook_size", codebook_size)
    codes = codes.reshape(-1)
    check_code_range(codes, 0, codebook_size, f"[0, codebook_size) = [0, {codebook_size})")
    hist = torch.bincount(codes, minlength=codebook_size)
    p = hist.double() / max(1, int(hist.sum()))
    return hist, float(perplexity(p)), int((hist > 0).sum())


def tau_schedule(step: int, *, start: float = 1.0, end: float = 0.5, steps: int = 1000) -> float:
    """Exponential temperature annealing: ``start`` at step 0 to ``end`` at ``steps``, constant after."""
    if start <= 0 or end <= 0 or steps < 1:
        raise ValueError(f"tau_schedule needs start > 0, end > 0, steps >= 1; got {start}, {end}, {steps}")
    frac = min(max(step, 0) / steps, 1.0)
    return start * (end / start) ** frac
