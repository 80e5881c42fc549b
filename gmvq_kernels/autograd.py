"""The autograd Function wiring the fused kernels to ``gmvq``: no kernel code here."""
import torch

from .backward import gmvq_bwd
from .forward import gmvq_fwd


class GMVQFunction(torch.autograd.Function):
    """Inputs: x (N, D), means (K, D), a, b, v (K,) fp32 (reference.component_terms), noise or None.
    Outputs: quantized, codes, log_likelihood, agg_posterior (local q̄), latent_nll, mixture_var, entropy.
    Gradients flow to x, means and (through a, b, v) to log_var and log_prior via torch autograd."""

    @staticmethod
    def forward(ctx, x, means, a, b, v, noise, tau, hard, seed, dot_precision):
        outs, soft = gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=seed, noise=noise,
                              dot_precision=dot_precision)
        z, codes, lse, agg, lat, s2, ent = outs
        lse_y, z_soft, lat_soft, s2_soft, hard_idx = soft
        ctx.mark_non_differentiable(codes)
        ctx.set_materialize_grads(False)  # a None upstream gradient removes its work from the kernels
        ctx.save_for_backward(x, means, a, b, v, noise, lse, ent, lse_y, z_soft, lat_soft, s2_soft,
                              hard_idx)
        ctx.opts = dict(tau=tau, hard=hard, seed=seed, dot_precision=dot_precision)
        return outs

    @staticmethod
    def backward(ctx, g_z, _g_codes, g_lse, g_qbar, g_lat, g_s, g_h):
        x, means, a, b, v, noise, *saved = ctx.saved_tensors
        grads = (g_z, g_lse, g_qbar, g_lat, g_s, g_h)
        if all(g is None for g in grads):
            return (None,) * 10
        dx, dmeans, da, db, dv = gmvq_bwd(x, means, a, b, v, noise, saved, grads, **ctx.opts)
        return dx, dmeans, da, db, dv, None, None, None, None, None
