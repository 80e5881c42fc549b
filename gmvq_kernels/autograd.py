"""The fused kernels as torch custom ops, ``gmvq_kernels::fused_fwd_v8`` and ``gmvq_kernels::fused_bwd_v8`` (and
``gmvq_kernels::fused_encode_v2``, the tokenizer path),
with fake (shape-only) implementations and autograd wiring: torch.compile sees one opaque node for the
forward and one for the backward and traces around them without graph breaks. Eager calls take
``EagerFused``, the same code as a plain autograd.Function (torch.library's dispatch costs host time).
No kernel code here.

The ops take ``tau`` as a 0-dim float64 CPU tensor, not a float: torch.compile turns a float
argument of a custom op into a guard on its value (one recompile per temperature of an annealing
schedule), a tensor into a graph input. ``seed`` likewise (see ``noise.seed_tensor``). ``EagerFused``,
which nothing traces, takes both as Python numbers (a seed on the device stays a tensor): no tensor to
make and read back per call."""
import inspect
from typing import Optional

import torch
from torch import Tensor

from . import autotune, noise, tiles
from .backward import gmvq_bwd
from .checks import check_tau
from .config import CUDAGRAPH_UNSAFE, launch_guard
from .encode import gmvq_encode_fwd
from .forward import delta_from_forward, gmvq_fwd
from .spec import DIFF_OUTPUTS, OUTPUT_FIELDS, SAVED_FIELDS, autocast_off

# what ``fused_fwd`` returns, in this order; code_consts: the per-code constants a, b, v, ||μ||² (4, K)
# fp32 (tiles.code_terms), which the backward reads as the forward made them
FWD_RETURNS = OUTPUT_FIELDS + SAVED_FIELDS + ("code_consts",)
# The training ops' names carry a version, raised whenever their arguments, the shapes or layouts of
# their outputs, or what _setup_context saves for the backward change: torch's compile caches key a
# custom op by its name alone (pytorch/pytorch#187319), so graphs cached by an older version would
# otherwise call the new op with the old signature, assert the old shapes, or hand the backward the old
# saved tensors (v2: stats (N, 4) instead of (4, N); v3: hard mode saves the argmax codes beside the
# sample, (2, N): a cached v2 backward graph passed the (N,) sample and the dx kernel read past it;
# v4: the forward returns ||x||² (x_sq), which the backward takes; v5: the backward takes the per-code
# constants a, b, v, ||μ||² instead of log_var and log π; v6: and the norm operands mp, x_parts or None;
# v7: tagged CUDAGRAPH_UNSAFE, so that no cached graph of a v6 op keeps it inside a CUDA graph; v8: the
# forward forms the per-code constants in a launch of its own and returns them, code_consts, which the
# backward takes (a traced graph formed them again in torch ops); log π None for the uniform prior).
OP_VERSION = 8


# what an eager backward takes from its forward instead of forming it again (_forward's kept["terms"])
EAGER_TERMS = ("a", "b", "v", "mm", "mp", "x_parts")


def _forward(x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision, for_backward, kept=None):
    """``_fused_fwd``; ``kept`` (a dict, or None) receives under "terms" the ``EAGER_TERMS``: the per-code
    constants a, b, v, mm (views of code_consts), the codes' norm operand mp (tiles.code_terms, one
    launch) and the rows' x_parts (forward.gmvq_fwd; None without the norm dot). Kernel launches, so
    inside the op: a traced graph's backward forms the operands again, and takes the constants from the
    op's code_consts."""
    tau = float(tau)
    check_tau(tau)  # again here: under torch.compile ``gmvq`` leaves the value check to the op
    with launch_guard():
        consts, mp = tiles.code_terms(means, log_var, log_pi)
    a, b, v, mm = consts
    if autotune.enabled():  # (training_kinds costs host time at every call)
        autotune.ensure_tuned(autotune.training_kinds(x.dtype, x.shape[1], x.device), x,
                              lambda: autotune.tune_training(x, means, a, b, v, tau=tau, hard=hard,
                                                             dot_precision=dot_precision))
    with launch_guard():
        outs, saved = gmvq_fwd(x, means, a, b, v, mm=mm, mp=mp, tau=tau, hard=hard, seed=seed, noise=noise,
                               dot_precision=dot_precision, for_backward=for_backward)
    if kept is not None:
        kept.update(terms=(a, b, v, mm, mp, saved["x_parts"]))  # EAGER_TERMS
    empty = dict(hard_idx=torch.int64, y_sums=torch.float32)  # the dtype of an absent one, returned empty
    return (*outs, *(x.new_empty(0, dtype=empty[name]) if saved[name] is None else saved[name]
                     for name in SAVED_FIELDS), consts)


def _fused_fwd(x: Tensor, means: Tensor, log_var: Tensor, log_pi: Optional[Tensor], noise: Optional[Tensor],
              tau: Tensor, hard: bool, seed: Tensor, dot_precision: str,
              for_backward: bool) -> tuple[(Tensor,) * len(FWD_RETURNS)]:
    """x (N, D), means (K, D) contiguous, same dtype; log_var, log_pi = log π (K,) fp32 (None: the
    uniform prior); noise None or (N, K) fp32 contiguous. Returns ``FWD_RETURNS``: the ``GMVQOutput``
    fields, then what the backward needs: stats (N, 4) fp32, hard_idx (N,) int64 (empty unless
    ``hard``), y_sums (N, D + 2) fp32 (empty unless ``for_backward`` and ``forward.delta_from_forward``),
    x_sq (N,) fp32 and code_consts (4, K) fp32. for_backward: whether a backward can follow (an input
    needs a gradient)."""
    return _forward(x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision, for_backward)


fused_fwd = torch.library.custom_op(f"gmvq_kernels::fused_fwd_v{OP_VERSION}", mutates_args=(),
                                    tags=CUDAGRAPH_UNSAFE)(_fused_fwd)


@fused_fwd.register_fake
def _(x, means, log_var, log_pi, noise, tau, hard, seed, dot_precision, for_backward):
    (N, D), K = x.shape, means.shape[0]
    vec = lambda n: x.new_empty(n, dtype=torch.float32)  # noqa: E731
    fake = dict(quantized=torch.empty_like(x), codes=x.new_empty(N, dtype=torch.int64), agg_posterior=vec(K),
                code_consts=x.new_empty((4, K), dtype=torch.float32),
                stats=x.new_empty((N, 4), dtype=torch.float32), x_sq=vec(N),
                hard_idx=x.new_empty(N if hard else 0, dtype=torch.int64),
                y_sums=x.new_empty((N, D + 2) if for_backward and delta_from_forward(x.dtype, hard, D) else (0,),
                                   dtype=torch.float32))
    return tuple(fake[name] if name in fake else vec(N) for name in FWD_RETURNS)


def _fused_bwd(x: Tensor, means: Tensor, a: Tensor, b: Tensor, v: Tensor, mm: Tensor, mp: Optional[Tensor],
              x_parts: Optional[Tensor], noise: Optional[Tensor],
              entropy: Tensor, stats: Tensor, hard_idx: Tensor, y_sums: Tensor, x_sq: Tensor,
              g_quantized: Optional[Tensor], g_log_likelihood: Optional[Tensor], g_agg_posterior: Optional[Tensor],
              g_latent_nll: Optional[Tensor], g_mixture_var: Optional[Tensor], g_entropy: Optional[Tensor],
              tau: Tensor, hard: bool, seed: Tensor, dot_precision: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, means, log_var, log π) from the upstream gradients ``g_<name>`` of ``DIFF_OUTPUTS``,
    given the forward's per-code constants a, b, v, mm (``code_terms``) and its norm operands mp and
    x_parts where they were kept (else None: formed again); a None gradient removes its work from the
    kernels (see ``backward.gmvq_bwd``). One parameter per output (not a list: inductor's call of a
    custom op flattens a list of optional tensors); the check below keeps them in step with
    ``DIFF_OUTPUTS``."""
    # the argmax codes, the backward's per-row stand-in for Δq (backward.defer_delta_q), come in
    # hard_idx's place in soft mode and as its second row in hard mode (_setup_context)
    saved = dict(entropy=entropy, stats=stats, hard_idx=hard_idx[0] if hard else None,
                 codes=hard_idx[1] if hard else hard_idx, y_sums=y_sums if y_sums.numel() else None, x_sq=x_sq,
                 x_parts=x_parts)
    given = locals()
    named = {name: given["g_" + name] for name in DIFF_OUTPUTS if given["g_" + name] is not None}
    with autocast_off(x.device.type), launch_guard():  # EagerFused's backward inside an autocast region
        return gmvq_bwd(x, means, a, b, v, noise, saved, named, tau=float(tau), hard=hard, seed=seed,
                        dot_precision=dot_precision, mm=mm, mp=mp)


assert [p for p in inspect.signature(_fused_bwd).parameters if p.startswith("g_")] == \
    ["g_" + name for name in DIFF_OUTPUTS], "fused_bwd takes one g_<name> per spec.DIFF_OUTPUTS, in that order"
fused_bwd = torch.library.custom_op(f"gmvq_kernels::fused_bwd_v{OP_VERSION}", mutates_args=(),
                                    tags=CUDAGRAPH_UNSAFE)(_fused_bwd)


@fused_bwd.register_fake
def _(x, means, a, *args):  # d log_var and d log π: (K,) fp32, as a
    return torch.empty_like(x), torch.empty_like(means), torch.empty_like(a), torch.empty_like(a)


def encode_codes(x: Tensor, means: Tensor, log_var: Tensor, log_pi: Optional[Tensor], dot_precision: str) -> Tensor:
    """codes = argmax_k ℓ_nk (N,) int64 (encode.py); x, means contiguous, log_var, log_pi = log π (K,)
    fp32 (None: uniform), whose per-code constants and norms it forms in one launch (tiles.code_terms).
    No gradient: the tokenizer path. What ``gmvq_encode`` calls outside torch.compile (the op below
    costs torch.library's dispatch)."""
    with launch_guard():
        (a, b, _, mm), mp = tiles.code_terms(means, log_var, log_pi)
    if autotune.enabled():
        autotune.ensure_tuned(("encode",), x, lambda: autotune.tune_encode(x, means, a, b, dot_precision=dot_precision))
    with launch_guard():
        return gmvq_encode_fwd(x, means, a, b, dot_precision=dot_precision, mm=mm, mp=mp)


# v2: takes log σ² and log π (the constants formed inside, one launch) instead of a and b
fused_encode = torch.library.custom_op("gmvq_kernels::fused_encode_v2", mutates_args=())(encode_codes)


@fused_encode.register_fake
def _(x, means, log_var, log_pi, dot_precision):
    return x.new_empty(x.shape[0], dtype=torch.int64)


FWD_INPUTS = ("x", "means", "log_var", "log_pi", "noise", "tau", "hard", "seed", "dot_precision", "for_backward")
DIFF_INPUTS = ("x", "means", "log_var", "log_pi")  # what fused_bwd returns gradients for


def _setup_context(ctx, inputs, output, terms=()):
    """What the backward takes, all of it through save_for_backward (no tensor on ctx itself), so that
    activation checkpointing frees it with the rest of its region. ``terms``: EagerFused's EAGER_TERMS,
    saved in code_consts' place (a, b, v, mm are its rows)."""
    inp = dict(zip(FWD_INPUTS, inputs))
    out = dict(zip(FWD_RETURNS, output))
    ctx.set_materialize_grads(False)  # in eager, an unused output sends None: its work is skipped
    # the argmax codes go with the hard sample, or take its place (see _fused_bwd); one saved tensor
    # either way, so fused_bwd's schema stays (torch's compile caches key a custom op by its name)
    out["hard_idx"] = torch.stack((out["hard_idx"], out["codes"])) if inp["hard"] else out["codes"]
    # a seed on the device is read again by the backward's kernels: a copy, in case it is changed in place
    # before the backward runs (a CUDA-graph step that advances it, say)
    seed = inp["seed"].clone() if noise.seed_on_device(inp["seed"]) else inp["seed"]
    tensors = (*(inp[n] for n in ("x", "means", "log_var", "log_pi", "noise")),
               *(out[n] for n in ("entropy",) + SAVED_FIELDS + ("code_consts",)))
    if isinstance(inp["tau"], Tensor):  # the custom op's tensors
        ctx.save_for_backward(*tensors, inp["tau"], seed)
    else:  # EagerFused's numbers (or a seed on the device: the copy above)
        ctx.save_for_backward(*tensors[:-1], *terms)
        ctx.tau_seed = (inp["tau"], seed)
    ctx.opts = (inp["hard"], inp["dot_precision"])


def _backward(ctx, *upstream, bwd=None):
    """Gradients of the FWD_INPUTS; ``bwd``: the backward's callable (the custom op by default)."""
    named = dict(zip(FWD_RETURNS, upstream))
    grads = [named[name] for name in DIFF_OUTPUTS]
    if all(g is None for g in grads):
        return (None,) * len(FWD_INPUTS)
    x, means, _log_var, _log_pi, *saved = ctx.saved_tensors
    if hasattr(ctx, "tau_seed"):  # EagerFused: its forward's terms last
        tau, seed = ctx.tau_seed
        saved, terms = saved[:-len(EAGER_TERMS)], saved[-len(EAGER_TERMS):]
    else:  # the custom op: the constants from code_consts; the operands formed again inside the backward op
        *saved, consts, tau, seed = saved
        terms = (*consts, None, None)
    hard, dot_precision = ctx.opts
    result = dict(zip(DIFF_INPUTS, (bwd or fused_bwd)(x, means, *terms, *saved, *grads, tau, hard, seed,
                                                      dot_precision)))
    need = dict(zip(FWD_INPUTS, ctx.needs_input_grad))
    return tuple(result[n] if n in result and need[n] else None for n in FWD_INPUTS)


fused_fwd.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("gmvq_kernels: double backward (gradients of gradients) through the fused "
                              "kernels is not supported; use impl='reference' for higher-order derivatives")


fused_bwd.register_autograd(_no_double_backward)


class EagerFused(torch.autograd.Function):
    """What ``gmvq`` calls outside torch.compile: the same forward, context and backward as the custom
    ops, without torch.library's dispatch around them (host work per fwd+bwd at a tiny shape on this
    project's CPU, ``speed.py --host-cpu``, three interleaved pairs: 464–475 → 402–412 µs). Under
    torch.compile the custom ops stay: they are what it traces."""

    @staticmethod
    def forward(ctx, *inputs):  # with ctx, not a separate setup_context: apply() then skips binding the
        # arguments to forward's signature (inspect.signature), ~20 µs a call
        inp = dict(zip(FWD_INPUTS, inputs))
        if not noise.seed_on_device(inp["seed"]):  # read once here, not again by each launcher
            inp["seed"] = int(inp["seed"])
            inputs = tuple(inp[name] for name in FWD_INPUTS)
        kept = {}
        output = _forward(*inputs, kept=kept)
        _setup_context(ctx, inputs, output, kept["terms"])  # the backward's too
        return output

    @staticmethod
    def backward(ctx, *upstream):
        grads = _backward(ctx, *upstream, bwd=_fused_bwd)
        if torch.is_grad_enabled():  # create_graph=True: as the custom op, refuse a second backward
            # the kernels' gradients are not on autograd's graph: tie each to the inputs being
            # differentiated, so that differentiating it again reaches the refusal
            inputs = [t for t in ctx.saved_tensors[:len(DIFF_INPUTS)] if t is not None and t.requires_grad]
            return tuple(None if g is None else _NoDoubleBackward.apply(g, *inputs) for g in grads)
        return grads


class _NoDoubleBackward(torch.autograd.Function):
    """Identity of its first argument whose backward raises (the eager path's stand-in for fused_bwd's
    autograd); the other arguments only put it on the graph of the tensors it depends on."""

    @staticmethod
    def forward(ctx, t, *depends_on):
        return t.view_as(t)

    backward = staticmethod(_no_double_backward)


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
