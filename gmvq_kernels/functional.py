"""``gmvq``: input validation (the one place user-facing errors are raised) and impl dispatch."""
import numbers
from typing import Optional

import torch

from . import config
from .autograd import FWD_OUTPUTS, all_reduce_sum, check_tau, fused_fwd
from .noise import seed_tensor
from .reference import GMVQOutput, gmvq_reference, log_prior_probs

IMPLS = ("auto", "triton", "reference")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _shape(t):
    return tuple(t.shape)


def _check_tensor(name, t, ndim, dtypes):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != ndim:
        want = "(N, D)" if name == "x" else "(K, D)" if name == "means" else "(K,)"
        raise ValueError(f"{name} must have shape {want}; got {_shape(t)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype in ({names}); got {t.dtype}")


def _check_finite(name, t):
    # Data-dependent (a host sync); skipped while torch.compile traces so graphs stay unbroken.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; got non-finite values (nan or inf)")


def can_use_triton(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (set before import)."""
    return device.type == "cuda" or (config.INTERPRET and device.type == "cpu")


def validate(x, means, log_var, log_prior, tau, noise, seed, impl, dot_precision):
    """Raise ValueError/TypeError naming the argument, the expectation and what was given."""
    _check_tensor("x", x, 2, FLOAT_DTYPES)
    _check_tensor("means", means, 2, FLOAT_DTYPES)
    _check_tensor("log_var", log_var, 1, FLOAT_DTYPES)
    N, D = x.shape
    if N < 1 or D < 1:
        raise ValueError(f"x must be non-empty with shape (N, D), N >= 1, D >= 1; got {_shape(x)}")
    K = means.shape[0]
    if K < 1 or means.shape[1] != D:
        raise ValueError(f"means must have shape (K, D) with K >= 1 and D == x.shape[1] == {D}; "
                         f"got {_shape(means)}")
    if log_var.shape != (K,):
        raise ValueError(f"log_var must have shape (K,) == ({K},); got {_shape(log_var)}")
    if log_prior is not None:
        _check_tensor("log_prior", log_prior, 1, FLOAT_DTYPES)
        if log_prior.shape != (K,):
            raise ValueError(f"log_prior must have shape (K,) == ({K},) or be None; got {_shape(log_prior)}")
    if means.dtype != x.dtype:
        raise TypeError(f"means must have the dtype of x ({x.dtype}); got {means.dtype}")
    params = {"means": means, "log_var": log_var, "log_prior": log_prior, "noise": noise}
    for name, t in params.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}); got {t.device}")
    if not torch.compiler.is_compiling():
        # under torch.compile a comparison would pin tau's value into the graph (a recompile per
        # temperature); the op checks it at run time instead
        check_tau(tau)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64 or seed.device.type != "cpu":
            raise ValueError(f"seed must be an integer in [0, 2**64) or a 0-dim int64 CPU tensor; got a tensor "
                             f"of shape {_shape(seed)}, dtype {seed.dtype} on {seed.device}")
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64) or a 0-dim int64 CPU tensor; got {seed!r}")
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor or None; got {type(noise).__name__}")
        if _shape(noise) != (N, K):
            raise ValueError(f"noise must have shape (N, K) == ({N}, {K}); got {_shape(noise)}")
        if not noise.is_floating_point():
            raise TypeError(f"noise must have a floating dtype; got {noise.dtype}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if dot_precision is not None and dot_precision not in config.DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be None or one of {config.DOT_PRECISIONS}; got {dot_precision!r}")
    if impl == "triton":
        if not can_use_triton(x.device):
            raise ValueError(f"impl='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                             f"set before triton is imported; got x on {x.device}")
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"impl='triton' needs x of dtype float32, float16 or bfloat16; got {x.dtype}")
    for name in ("means", "log_var", "log_prior"):
        if params[name] is not None:
            _check_finite(name, params[name])


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
    """Fused GM-VQ (DESIGN.md §1): quantized, codes, log_likelihood, agg_posterior, latent_nll,
    mixture_var, entropy.

    x (N, D) and means (K, D) share a dtype (fp32/fp16/bf16 for the kernels; fp64 too for the reference);
    log_var (K,) per-component log-variance; log_prior (K,) prior logits or None (uniform).
    tau: Gumbel-softmax temperature > 0. hard: straight-through one-hot sample. seed: 64-bit key of the
    in-kernel Gumbel noise (``gumbel_noise(N, K, seed)`` returns it), an int in [0, 2**64) or a 0-dim
    int64 CPU tensor with its bits; noise: explicit (N, K) noise instead.
    impl: "auto" (triton on CUDA or under TRITON_INTERPRET=1, else reference), "triton", "reference".
    process_group: all-reduce q̄ over its ranks. dot_precision: fp32 distance-dot precision, one of
    "ieee", "tf32x3" (default), "tf32"; ignored for half inputs, which use their native dot.
    Statistics are fp32 (fp64 for fp64 inputs); quantized has the dtype of x. Under torch.autocast,
    x and means are cast to the autocast dtype first (so quantized has that dtype).
    torch.compile(fullgraph=True) traces it: the kernels are custom ops (autograd.py), and a changing
    tau or seed does not recompile after the first change (tau's value is then checked in the op)."""
    validate(x, means, log_var, log_prior, tau, noise, seed, impl, dot_precision)
    if torch.is_autocast_enabled(x.device.type):
        # AMP: the distance dots take the autocast dtype, as a matmul would; log_var/log_prior and all
        # statistics stay fp32, quantized comes back in the autocast dtype
        amp = torch.get_autocast_dtype(x.device.type)
        x, means = x.to(amp), means.to(amp)
    impl = resolve_impl(impl, x)
    if impl == "reference":
        out = gmvq_reference(x, means, log_var, log_prior, tau=tau, hard=hard, seed=seed, noise=noise)
    else:
        log_var32 = log_var.float()
        outs = fused_fwd(x.contiguous(), means.contiguous(), log_var32,
                         log_prior_probs(log_prior, means.shape[0], log_var32),
                         None if noise is None else noise.float().contiguous(),
                         torch.ones((), dtype=torch.float64) * tau,  # see autograd.py on tensor tau/seed
                         bool(hard), seed_tensor(seed), dot_precision or config.DEFAULT_DOT_PRECISION)
        out = GMVQOutput(*outs[:FWD_OUTPUTS])
    if process_group is not None:
        out = out._replace(agg_posterior=_global_agg_posterior(out.agg_posterior, x.shape[0], process_group))
    return out
