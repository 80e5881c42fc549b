"""Input validation: the one place user-facing errors are raised, for the functional API and the module.

Every message names the argument, what was expected and what was given."""
import math
import numbers
import os

import torch

from . import config
from .spec import autocast_dtype, capturing_graph


# Supported ranges: inside them every output and gradient is finite in both impls
# (tests/test_reliability.py); outside, exp(±λ), ℓ/τ or ‖x‖² leave fp32.
TAU_RANGE = (1e-4, 1e4)
LOG_VAR_LIMIT = 30.0       # |λ| ≤ 30: σ² from 1e-13 to 1e13
MAX_D = 512                # the kernels hold a whole row of D in one tile
MAX_K = 2**31 - 1          # the kernels compare codes in 32 bits (hard mode's one-hot)
SEED_MSG = "seed must be an integer in [0, 2**64) or a 0-dim int64 tensor on the CPU or a CUDA device"


def check_tau(tau):
    """tau must be a real number in TAU_RANGE (comparisons only: NaN fails them too)."""
    lo, hi = TAU_RANGE
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not lo <= tau <= hi:
        raise ValueError(f"tau must be a finite number in [{lo:g}, {hi:g}]; got {tau!r}")


def check_seed(seed, device=None):
    """``device``: where the noise is drawn; a seed on a CUDA device must be on that one."""
    if isinstance(seed, torch.Tensor):
        if seed.device.type == "cuda" and device is not None and seed.device != torch.device(device):
            raise ValueError(f"seed on a CUDA device must be on the device of the inputs ({device}); "
                             f"got {seed.device}")
        if seed.dim() != 0 or seed.dtype != torch.int64 or seed.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{SEED_MSG}; got a tensor of shape {_shape(seed)}, dtype {seed.dtype} on {seed.device}")
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"{SEED_MSG}; got {seed!r}")


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {value!r}")


def check_number(name, value, lo=-math.inf, hi=math.inf):
    """A finite real number (not a bool) in [lo, hi]; not checked while torch.compile traces: with
    ``dynamic=True`` a module's float attributes (beta, gamma) are symbolic there, and a comparison
    breaks the graph (eager calls and the module's constructor check them)."""
    if torch.compiler.is_compiling():
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be a finite number in [{lo:g}, {hi:g}]; got {value!r}")


def check_int(name, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")


def check_codes(codes):
    """Codes (of ``gmvq_decode`` and the module's decode): an int64 or int32 tensor."""
    if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"codes must be an int64 or int32 torch.Tensor; got {describe(codes)}")


def check_code_range(codes, lo, hi, interval):
    """Every code in [lo, hi) (one aminmax; it reads the values, so callers skip it where that would
    sync a device). ``interval`` is how the message writes the range."""
    if codes.numel():
        first, last = (int(v) for v in torch.aminmax(codes))
        if not lo <= first <= last < hi:
            raise ValueError(f"codes must lie in {interval}; got values from {first} to {last}")


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


IMPLS = ("auto", "triton", "torch", "reference")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _shape(t):
    return tuple(t.shape)


def describe(value) -> str:
    """What an argument was, for an error message: a tensor's dtype, or the type of anything else."""
    return f"{value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__


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


def _skip_value_checks(t):
    """Checks that read a tensor's values are skipped while a graph is captured (torch.compile's stay
    unbroken; torch.jit.trace would warn that a value read into Python is not traced), on meta tensors,
    and, unless asked for, on CUDA, where they would stall the host on the device at every call."""
    return capturing_graph() or t.device.type == "meta" or (
        t.device.type == "cuda" and not check_finite_on_cuda())


def _check_finite(name, t):
    if _skip_value_checks(t):
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; got non-finite values (nan or inf)")


def nvidia_gpu(device: torch.device) -> bool:
    """A CUDA device of an NVIDIA build of torch: a ROCm build calls AMD GPUs "cuda" too, but the kernels'
    noise takes its logs in PTX (noise._log2), which only NVIDIA GPUs run."""
    return device.type == "cuda" and torch.version.hip is None


def can_use_triton(device: torch.device) -> bool:
    """The kernels run on NVIDIA CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (set before
    import)."""
    return nvidia_gpu(device) or (config.INTERPRET and device.type == "cpu")


def validate(x, means, log_var, log_prior, tau, hard, noise, seed, impl, dot_precision, process_group=None):
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
    if autocast_dtype(means) != autocast_dtype(x):  # under autocast both take its dtype (fp64 aside)
        raise TypeError(f"means must have the dtype of x ({x.dtype}); got {means.dtype}")
    params = {"means": means, "log_var": log_var, "log_prior": log_prior, "noise": noise}
    for name, t in params.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}); got {t.device}")
    if not torch.compiler.is_compiling():
        # under torch.compile a comparison would pin tau's value into the graph (a recompile per
        # temperature); the op checks it at run time instead
        check_tau(tau)
    check_seed(seed, x.device)
    check_flag("hard", hard)
    # isinstance, not a hasattr check for group_name: torch 2.11's dynamo cannot trace hasattr on a
    # process group (a graph break, an error under fullgraph=True)
    if process_group is not None and not (torch.distributed.is_available()
                                          and isinstance(process_group, torch.distributed.ProcessGroup)):
        raise TypeError(f"process_group must be a torch.distributed ProcessGroup or None; got {process_group!r}")
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor or None; got {type(noise).__name__}")
        if _shape(noise) != (N, K):
            raise ValueError(f"noise must have shape (N, K) == ({N}, {K}); got {_shape(noise)}")
        if not noise.is_floating_point():
            raise TypeError(f"noise must have a floating dtype; got {noise.dtype}")
        if noise.requires_grad:
            raise ValueError("noise must not require grad: the noise is an input sample, not a parameter "
                             "(the kernels return no gradient for it); pass noise.detach()")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if dot_precision is not None and dot_precision not in config.DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be None or one of {config.DOT_PRECISIONS}; got {dot_precision!r}")
    if impl == "triton":
        if not can_use_triton(x.device):
            rocm = " of a ROCm build of torch (the kernels are NVIDIA-only)" if x.device.type == "cuda" else ""
            raise ValueError(f"impl='triton' needs NVIDIA CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                             f"set before triton is imported; got x on {x.device}{rocm}. impl='auto' or "
                             f"'reference' runs anywhere")
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"impl='triton' needs x of dtype float32, float16 or bfloat16; got {x.dtype}")
    if impl in ("auto", "triton") and can_use_triton(x.device) and D > MAX_D:
        raise ValueError(f"x must have D <= {MAX_D} for the fused kernels (one tile holds a whole row); "
                         f"got D = {D}. impl='torch' or 'reference' takes any D")
    if impl in ("auto", "triton") and can_use_triton(x.device) and K > MAX_K:
        raise ValueError(f"means must have K <= {MAX_K} codes for the fused kernels (codes compare in 32 bits); "
                         f"got K = {K}. impl='torch' or 'reference' takes any K")
    for name in ("means", "log_var", "log_prior", "noise"):
        if params[name] is not None:
            _check_finite(name, params[name])
    _check_log_var(log_var)


def _check_log_var(log_var):
    if _skip_value_checks(log_var):
        return
    lo, hi = (float(v) for v in torch.aminmax(log_var.detach().float()))
    if not -LOG_VAR_LIMIT <= lo <= hi <= LOG_VAR_LIMIT:
        raise ValueError(f"log_var must lie in [-{LOG_VAR_LIMIT:g}, {LOG_VAR_LIMIT:g}] (σ² from 1e-13 to 1e13); "
                         f"got values from {lo:g} to {hi:g}")


