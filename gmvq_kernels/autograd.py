"""The fused kernels as two torch custom ops, ``gmvq_kernels::fused_fwd`` and ``gmvq_kernels::fused_bwd``,
with fake (shape-only) implementations and autograd wiring: torch.compile sees one opaque node for the
forward and one for the backward and traces around them without graph breaks. No kernel code here.

The ops take ``tau`` as a 0-dim float64 CPU tensor, not a float: torch.compile turns a float
argument of a custom op into a guard on its value (one recompile per temperature of an annealing
schedule), a tensor into a graph input. ``seed`` likewise (see ``noise.seed_tensor``)."""
import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .backward import gmvq_bwd
from .forward import gmvq_fwd
from .reference import component_terms

FWD_OUTPUTS = 7  # quantized, codes, log_likelihood, agg_posterior, latent_nll, mixture_var, entropy


def check_tau(tau):
    """tau must be a finite number > 0 (comparisons only: NaN fails them too)."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a finite number > 0; got {tau!r}")


@torch.library.custom_op("gmvq_kernels::fused_fwd", mutates_args=())
def fused_fwd(x: Tensor, means: Tensor, log_var: Tensor, log_pi: Tensor, noise: Optional[Tensor],
              tau: Tensor, hard: bool, seed: Tensor, dot_precision: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (N, D), means (K, D) contiguous, same dtype; log_var, log_pi = log π (K,) fp32; noise None or
    (N, K) fp32 contiguous. Returns the 7 ``GMVQOutput`` fields, then what the backward needs:
    stats (4, N) fp32 and hard_idx (N,) int64 (empty unless ``hard``)."""
    tau = float(tau)
    check_tau(tau)  # again here: under torch.compile ``gmvq`` leaves the value check to the op
    a, b, v = (t.contiguous() for t in component_terms(log_var, log_pi, x.shape[1]))
    outs, (stats, hard_idx) = gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=seed, noise=noise,
                                       dot_precision=dot_precision)
    if hard_idx is None:
        hard_idx = torch.empty(0, dtype=torch.int64, device=x.device)
    return (*outs, stats, hard_idx)


@fused_fwd.register_fake
def _(x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision):
    N, K = x.shape[0], means.shape[0]
    vec = lambda n: x.new_empty(n, dtype=torch.float32)  # noqa: E731
    codes = x.new_empty(N, dtype=torch.int64)
    hard_idx = x.new_empty(N if hard else 0, dtype=torch.int64)
    return (torch.empty_like(x), codes, vec(N), vec(K), vec(N), vec(N), vec(N),
            x.new_empty((4, N), dtype=torch.float32), hard_idx)


@torch.library.custom_op("gmvq_kernels::fused_bwd", mutates_args=())
def fused_bwd(x: Tensor, means: Tensor, log_var: Tensor, log_pi: Tensor, noise: Optional[Tensor],
              entropy: Tensor, stats: Tensor, hard_idx: Tensor, g_z: Optional[Tensor],
              g_lse: Optional[Tensor], g_qbar: Optional[Tensor], g_lat: Optional[Tensor],
              g_s: Optional[Tensor], g_h: Optional[Tensor], tau: Tensor, hard: bool, seed: Tensor,
              dot_precision: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, means, log_var, log π) from the upstream gradients of the 7 outputs (codes has
    none); a None gradient removes its work from the kernels (see ``backward.gmvq_bwd``)."""
    a, b, v = (t.contiguous() for t in component_terms(log_var, log_pi, x.shape[1]))
    saved = (entropy, stats, hard_idx if hard else None)
    return gmvq_bwd(x, means, a, b, v, noise, saved, (g_z, g_lse, g_qbar, g_lat, g_s, g_h),
                    tau=float(tau), hard=hard, seed=seed, dot_precision=dot_precision)


@fused_bwd.register_fake
def _(x, means, log_var, log_pi, *args):
    return torch.empty_like(x), torch.empty_like(means), torch.empty_like(log_var), torch.empty_like(log_pi)


def _setup_context(ctx, inputs, output):
    x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision = inputs
    ent, stats, hard_idx = output[6], output[7], output[8]
    ctx.set_materialize_grads(False)  # in eager, an unused output sends None: its work is skipped
    ctx.save_for_backward(x, means, log_var, log_pi, noise, ent, stats, hard_idx, tau, seed)
    ctx.opts = (hard, dot_precision)


def _backward(ctx, g_z, _g_codes, g_lse, g_qbar, g_lat, g_s, g_h, _g_stats, _g_hard_idx):
    grads = (g_z, g_lse, g_qbar, g_lat, g_s, g_h)
    if all(g is None for g in grads):
        return (None,) * 9
    *saved, tau, seed = ctx.saved_tensors
    hard, dot_precision = ctx.opts
    dx, dmeans, d_log_var, d_log_pi = fused_bwd(*saved, *grads, tau, hard, seed, dot_precision)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dmeans if need[1] else None, d_log_var if need[2] else None,
            d_log_pi if need[3] else None, None, None, None, None, None)


fused_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("gmvq_kernels::all_reduce_sum", mutates_args=())
def all_reduce_sum(t: Tensor, group_name: str) -> Tensor:
    """Sum of ``t`` over the ranks of the process group named ``group_name``; the backward sums the
    gradient the same way. Ours rather than torch.distributed.nn's all_reduce, which torch.compile
    refuses; a custom op is one opaque node to it."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _resolve_process_group

    out = t.clone()
    dist.all_reduce(out, group=_resolve_process_group(group_name))
    return out


@all_reduce_sum.register_fake
def _(t, group_name):
    return torch.empty_like(t)


def _all_reduce_setup(ctx, inputs, output):
    ctx.group_name = inputs[1]


all_reduce_sum.register_autograd(lambda ctx, g: (all_reduce_sum(g, ctx.group_name), None),
                                 setup_context=_all_reduce_setup)
