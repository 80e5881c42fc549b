"""``gmvq``: the public fused op: validation (checks.py), AMP casting and impl dispatch."""
from typing import Optional

import torch

from . import config
from .autograd import all_reduce_sum, fused_fwd
from .checks import KERNEL_DTYPES, can_use_triton, checked_tau, validate
from .noise import seed_tensor
from .reference import gmvq_reference
from .spec import GMVQOutput, log_prior_probs

def resolve_impl(impl: str, x: torch.Tensor) -> str:
    if impl != "auto":
        return impl
    return "triton" if can_use_triton(x.device) and x.dtype in KERNEL_DTYPES else "reference"


def _global_agg_posterior(agg, n_local, process_group):
    """q̄ over all ranks: one all-reduce of [column sums, row count]. It is autograd-aware (its backward
    all-reduces the incoming gradient), so after DDP averages parameter gradients they equal one
    process's on the global batch (see README, "Data parallel")."""
    sums = all_reduce_sum(torch.cat([agg * n_local, agg.new_full((1,), n_local)]), process_group.group_name)
    return sums[:-1] / sums[-1]


def gmvq(x, means, log_var, log_prior=None, *, tau: float = 1.0, hard: bool = False, seed=0,
         noise: Optional[torch.Tensor] = None, impl: str = "auto", process_group=None,
         dot_precision: Optional[str] = None) -> GMVQOutput:
    """Fused GM-VQ (docs/design.md §1): quantized, codes, log_likelihood, agg_posterior, latent_nll,
    mixture_var, entropy.

    x (N, D) and means (K, D) share a dtype (fp32/fp16/bf16 for the kernels; fp64 too for the reference);
    log_var (K,) per-component log-variance; log_prior (K,) prior logits or None (uniform).
    tau: Gumbel-softmax temperature in [1e-4, 1e4]. hard: straight-through one-hot sample. seed: 64-bit key of the
    in-kernel Gumbel noise (``gumbel_noise(N, K, seed)`` returns it), an int in [0, 2**64) or a 0-dim
    int64 CPU tensor with its bits; noise: explicit (N, K) noise instead.
    impl: "auto" (triton on CUDA or under TRITON_INTERPRET=1, else reference), "triton", "reference".
    process_group: all-reduce q̄ over its ranks. dot_precision: fp32 distance-dot precision, one of
    "ieee", "tf32x3" (default), "tf32"; ignored for half inputs, which use their native dot.
    Statistics are fp32 (fp64 for fp64 inputs); quantized has the dtype of x. A row of x that is not
    finite gives NaN outputs and code −1 (README, "NaN policy"). Under torch.autocast,
    x and means are cast to the autocast dtype first (so quantized has that dtype).
    torch.compile(fullgraph=True) traces it: the kernels are custom ops (autograd.py), and a changing
    tau or seed does not recompile after the first change (tau's value is then checked in the op)."""
    validate(x, means, log_var, log_prior, tau, hard, noise, seed, impl, dot_precision, process_group)
    if not torch.compiler.is_compiling():
        tau = float(tau)  # any real number type (Fraction, NumPy) from here on
    if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        # AMP: the distance dots take the autocast dtype, as a matmul would; log_var/log_prior and all
        # statistics stay fp32, quantized comes back in the autocast dtype
        amp = torch.get_autocast_dtype(x.device.type)
        x, means = x.to(amp), means.to(amp)
    impl = resolve_impl(impl, x)
    if impl == "reference":
        if torch.compiler.is_compiling():  # tau is checked when the graph runs (see checks.checked_tau)
            tau = checked_tau(torch.ones((), dtype=torch.float64) * tau)
        out = gmvq_reference(x, means, log_var, log_prior, tau=tau, hard=hard, seed=seed, noise=noise)
    else:
        log_var32 = log_var.float()
        outs = fused_fwd(x.contiguous(), means.contiguous(), log_var32,
                         log_prior_probs(log_prior, means.shape[0], log_var32),
                         None if noise is None else noise.float().contiguous(),
                         torch.ones((), dtype=torch.float64) * tau,  # see autograd.py on tensor tau/seed
                         bool(hard), seed_tensor(seed), dot_precision or config.DEFAULT_DOT_PRECISION)
        out = GMVQOutput(*outs[:len(GMVQOutput._fields)])
    if process_group is not None:
        out = out._replace(agg_posterior=_global_agg_posterior(out.agg_posterior, x.shape[0], process_group))
    return out
