"""What the fused op is, shared by every layer of the kernel path: the outputs and their names, the
gradients that can flow back (by name), and the per-code constants of the logits.

Adding an output: a field of ``GMVQOutput`` (and ``DIFF_OUTPUTS`` if it carries a gradient), plus the
kernel code that computes it. The custom ops, the autograd wiring and the tests derive their order from
these lists. ``reference.py`` does not import this module's math: the ground truth writes its own.
"""
import contextlib
import math
import sys
from typing import NamedTuple, Optional

import torch

LOG_2PI = math.log(2.0 * math.pi)


class GMVQOutput(NamedTuple):
    """Outputs of ``gmvq`` (symbols: x_n, μ_k, λ_k = log σ_k², ℓ_nk, q_nk, y_nk, see the README)."""
    quantized: torch.Tensor       # (N, D), dtype of x: z_n = Σ_k y_nk μ_k (hard: μ of argmax_k ℓ + g)
    codes: torch.Tensor           # (N,) int64: argmax_k ℓ_nk
    log_likelihood: torch.Tensor  # (N,): logsumexp_k ℓ_nk = log p(x_n)
    agg_posterior: torch.Tensor   # (K,): q̄_k = mean_n q_nk
    latent_nll: torch.Tensor      # (N,): Σ_k y_nk d_nk / (2σ_k²)
    mixture_var: torch.Tensor     # (N,): s_n² = Σ_k y_nk σ_k²
    entropy: torch.Tensor         # (N,): H(q_n)


OUTPUT_FIELDS = GMVQOutput._fields


def capturing_graph() -> bool:
    """Whether a graph is being captured: torch.compile or torch.export tracing (dynamo), or
    torch.jit.trace. Their tracers record torch's dispatcher ops alone, so the op then takes its
    custom-op form: a kernel launch, a C pass or NumPy outside one would be left out of the graph (its
    output buffers recorded as uninitialised ``empty`` tensors) or baked into it as a constant."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def compiler_marks(module_name: str, **marks):
    """A ``__getattr__`` for module ``module_name`` that gives each name of ``marks`` (name → (decorator,
    function)) ``torch.compiler.<decorator>(function)`` at its first lookup as a module attribute, then
    keeps it in the module. Applied at import, the decorators would import torch._dynamo: 1.9–2.2 s
    instead of 0.42–0.44 s for ``import gmvq_kernels`` (README). torch.compile's tracing looks up a module attribute that is not
    in the module's dict with getattr, so it gets the marked function too (tests:
    test_eager.py::test_torch_compile_traces_it, test_torch_compile.py::test_compiled_module_kmeans_init,
    test_torch_compile.py::test_import_leaves_torch_dynamo_out)."""
    def __getattr__(name):
        if name not in marks:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        decorator, fn = marks[name]
        marked = getattr(torch.compiler, decorator)(fn)
        setattr(sys.modules[module_name], name, marked)
        return marked
    return __getattr__


def with_fields(out: GMVQOutput, **changes) -> GMVQOutput:
    """``out`` with some fields replaced, as a new tuple: NamedTuple's own _replace is what torch 2.11's
    dynamo cannot trace (an AssertionError in its side-effect codegen under torch.compile)."""
    assert set(changes) <= set(OUTPUT_FIELDS), f"not GMVQOutput fields: {set(changes) - set(OUTPUT_FIELDS)}"
    return GMVQOutput(*(changes.get(name, value) for name, value in zip(OUTPUT_FIELDS, out)))


# outputs that carry a gradient (codes is an integer output), in the order the backward op takes them
DIFF_OUTPUTS = tuple(f for f in OUTPUT_FIELDS if f != "codes")
# what the forward returns for the backward, after the outputs: stats, hard_idx (empty unless hard),
# y_sums (empty unless forward.delta_from_forward) and x_sq = ||x||² (N,) fp32, which every later pass reads
SAVED_FIELDS = ("stats", "hard_idx", "y_sums", "x_sq")
# columns of the (N, 4) fp32 softmax statistics: the row maxima (natural units) and log2 of the sums of
# q = softmax(ℓ) and y = softmax((ℓ + g)/τ), each sum relative to its maximum (y's: at τ = 1 with drawn
# noise, relative to q's maximum, m_y = m_q; forward.forward_tau_one). One 16-byte record per row: the
# column kernels (q̄, dμ) load a row tile's four in one go (as (4, N) rows they cost dμ 2.7 instructions
# per element more)
STATS_FIELDS = ("m_q", "log2_s_q", "m_y", "log2_s_y")


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-row / per-code statistics are fp32, or fp64 when the inputs are fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype ``t`` takes in the op's distance dots: as in a matmul, the autocast dtype where autocast
    is on for t's device and t is fp32 or half (torch's autocast leaves fp64 alone), else t's own."""
    if t.device.type != "meta" and t.dtype != torch.float64 and torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def to_autocast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its ``autocast_dtype`` (itself where that is its own: no torch op on the host path)."""
    dtype = autocast_dtype(t)
    return t if dtype == t.dtype else t.to(dtype)


def autocast_off(device_type: str):
    """Context for the op's own eager forward and backward: autocast off, so that their precision is the
    op's (fp32 statistics, products in the inputs' dtype). A backward called inside an autocast region
    runs with the region's autocast on (a compiled graph's ops run with it off): impl="torch"'s
    backward would form half products there and hand them to its C passes."""
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def log_prior_probs(log_prior: Optional[torch.Tensor], K: int, like: torch.Tensor) -> torch.Tensor:
    """log π (K,) in the dtype and device of ``like``: log_softmax of the prior logits, or −log K."""
    if log_prior is None:
        return torch.full((K,), -math.log(K), dtype=like.dtype, device=like.device)
    return torch.log_softmax(log_prior.to(like.dtype), dim=0)


def code_sq_norms(means: torch.Tensor) -> torch.Tensor:
    """||μ_k||² (K,) fp32, the per-code part of the distance ||x||² + ||μ||² − 2 x·μ. The launchers
    compute it once per call and every kernel reads it (no gradient: the kernels differentiate d)."""
    m = means.float()
    return (m * m).sum(1)


def logit_terms(log_var, log_pi, D: int):
    """(a, b): the per-code constants of the logits ℓ_nk = b_k − d_nk·a_k (differentiable, O(K)):
    a_k = 1/(2σ_k²), b_k = log π_k − (D/2)(λ_k + log 2π)."""
    a = 0.5 * torch.exp(-log_var)
    b = log_pi - 0.5 * D * (log_var + LOG_2PI)
    return a, b


def component_terms(log_var, log_pi, D: int):
    """(a, b, v): ``logit_terms`` and v_k = σ_k², which the training kernels also read."""
    return (*logit_terms(log_var, log_pi, D), torch.exp(log_var))
