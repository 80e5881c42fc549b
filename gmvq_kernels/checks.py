"""Input validation: the one place user-facing errors are raised, for the functional API and the module.

Every message names the argument, what was expected and what was given."""
import math
import numbers
import os

import torch

from . import config


def check_tau(tau):
    """tau must be a finite number > 0 (comparisons only: NaN fails them too)."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a finite number > 0; got {tau!r}")


@torch.library.custom_op("gmvq_kernels::checked_tau", mutates_args=())
def checked_tau(tau: torch.Tensor) -> torch.Tensor:
    """tau (a 0-dim CPU tensor), checked when it runs. Under torch.compile a comparison on a traced tau
    would pin its value into the graph and a raise would not trace; this op is opaque to the compiler,
    so the check runs with every call, and using its output keeps it in the graph."""
    check_tau(float(tau))
    return tau.clone()


@checked_tau.register_fake
def _(tau):
    return torch.empty_like(tau)


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


def check_finite_on_cuda() -> bool:
    """Whether CUDA tensors get the data-dependent finiteness checks (one host sync each): only when
    GMVQ_CHECK_FINITE=1. CPU tensors always do (no device to wait for)."""
    return os.environ.get("GMVQ_CHECK_FINITE", "0") == "1"


def _check_finite(name, t):
    # data-dependent: skipped while torch.compile traces (graphs stay unbroken) and, unless asked for, on
    # CUDA, where it would stall the host on the device every call
    if torch.compiler.is_compiling() or (t.device.type == "cuda" and not check_finite_on_cuda()):
        return
    if not bool(torch.isfinite(t).all()):
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
    for name in ("means", "log_var", "log_prior", "noise"):
        if params[name] is not None:
            _check_finite(name, params[name])


