"""The autograd Function wiring the fused kernels to ``gmvq``: no kernel code here."""
import torch

from .backward import gmvq_bwd
from .forward import gmvq_fwd
from .reference import component_terms


class GMVQFunction(torch.autograd.Function):
    """Inputs: x (N, D), means (K, D), log_var (K,) fp32, log_pi (K,) fp32 = log π, noise or None.
    Outputs: quantized, codes, log_likelihood, agg_posterior (local q̄), latent_nll, mixture_var, entropy.
    Gradients: x, means, log_var and log π (torch's log_softmax backward carries the last to ρ)."""

    @staticmethod
    def forward(ctx, x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision):
        a, b, v = (t.contiguous() for t in component_terms(log_var, log_pi, x.shape[1]))
        outs, (stats, hard_idx) = gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=seed, noise=noise,
                              dot_precision=dot_precision)
        z, codes, lse, agg, lat, s2, ent = outs
        ctx.mark_non_differentiable(codes)
        ctx.set_materialize_grads(False)  # a None upstream gradient removes its work from the kernels
        ctx.save_for_backward(x, means, a, b, v, noise, ent, stats, hard_idx)
        ctx.opts = dict(tau=tau, hard=hard, seed=seed, dot_precision=dot_precision)
        return outs

    @staticmethod
    def backward(ctx, g_z, _g_codes, g_lse, g_qbar, g_lat, g_s, g_h):
        x, means, a, b, v, noise, *saved = ctx.saved_tensors
        grads = (g_z, g_lse, g_qbar, g_lat, g_s, g_h)
        if all(g is None for g in grads):
            return (None,) * 9
        dx, dmeans, d_log_var, d_log_pi = gmvq_bwd(x, means, a, b, v, noise, saved, grads, **ctx.opts)
        return dx, dmeans, d_log_var, d_log_pi, None, None, None, None, None
