"""``gmvq``: the public fused op: validation (checks.py), AMP casting and impl dispatch."""
from typing import Optional

import torch

from . import config, cpu_rows
from .autograd import EagerFused, all_reduce_sum, encode_codes, fused_encode, fused_fwd
from .checks import KERNEL_DTYPES, can_use_triton, check_code_range, check_codes, checked_tau, validate
from .eager import gmvq_eager
from .noise import seed_tensor
from .reference import gmvq_encode_reference, reference_forward, reference_forward_blocks
from .spec import GMVQOutput, SAVED_FIELDS, capturing_graph, log_prior_probs, to_autocast, with_fields

def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """"auto": triton where it runs (dtype permitting), else "torch" on a CPU, else the reference (fp64
    on CUDA, meta tensors). "torch" is an eager evaluation of the reference's math: under torch.compile
    (any graph capture: spec.capturing_graph) it runs as two custom ops where its C row passes are built
    (eager.rows_fwd, with CPU tensors), else it traces the reference, whose graph inductor fuses (the
    torch ops' Python loop over row blocks and saved blocks would not trace)."""
    if impl == "auto":
        if can_use_triton(x.device) and x.dtype in KERNEL_DTYPES:
            return "triton"
        impl = "torch" if x.device.type == "cpu" else "reference"
    if impl == "torch" and capturing_graph() and (x.device.type != "cpu" or not cpu_rows.rows_library_built()):
        return "reference"
    return impl


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
    tau: Gumbel-softmax temperature in [1e-4, 1e4]. hard: straight-through one-hot sample.
    seed: 64-bit key of the in-kernel Gumbel noise (``gumbel_noise(N, K, seed)`` returns it), an int in
    [0, 2**64) or a 0-dim int64 tensor with its bits (on the CPU, or on the inputs' CUDA device: README,
    "CUDA graphs"). The noise is a function of (seed, n, k), so a training loop passes a new seed at
    each step (``GaussianMixtureVQ`` does: seed + t). noise: explicit (N, K) noise instead.
    impl: "auto" (triton on CUDA or under TRITON_INTERPRET=1, "torch" on a CPU, else the reference),
    "triton", "torch" (plain torch ops in row blocks with the hand-derived backward, eager.py; under
    torch.compile its C passes as custom ops, or the reference where they are not built), "reference"
    (autograd through the ground truth).
    process_group: all-reduce q̄ over its ranks. dot_precision: fp32 distance-dot precision, one of
    "ieee", "tf32x3" (default), "tf32"; ignored for half inputs, which use their native dot.
    Statistics are fp32 (fp64 for fp64 inputs); quantized has the dtype of x. A row of x that is not
    finite gives NaN outputs and code −1 (README, "NaN policy"). Under torch.autocast,
    x and means are cast to the autocast dtype first, as a matmul's inputs (so quantized has that dtype;
    fp64 ones stay, and x and means may then differ in dtype before the cast).
    torch.compile(fullgraph=True) traces it: the kernels are custom ops (autograd.py), and a changing
    tau or seed does not recompile after the first change (tau's value is then checked in the op)."""
    return gmvq_with_sample(x, means, log_var, log_prior, tau=tau, hard=hard, seed=seed, noise=noise, impl=impl,
                            process_group=process_group, dot_precision=dot_precision)[0]


def gmvq_with_sample(x, means, log_var, log_prior=None, *, tau=1.0, hard=False, seed=0, noise=None,
                     impl="auto", process_group=None, dot_precision=None):
    """``gmvq`` plus the code of each row's hard sample, argmax_k(ℓ_nk + g_nk) (the code whose mean
    ``quantized`` holds; −1 for a non-finite row), or None when soft: (GMVQOutput, sample_codes)."""
    validate(x, means, log_var, log_prior, tau, hard, noise, seed, impl, dot_precision, process_group)
    if not torch.compiler.is_compiling():
        tau = float(tau)  # any real number type (Fraction, NumPy) from here on
    # AMP: the distance dots take the autocast dtype, as a matmul would; log_var/log_prior and all
    # statistics stay fp32, quantized comes back in the autocast dtype
    x, means = to_autocast(x), to_autocast(means)
    impl = resolve_impl(impl, x)
    # whether a backward can follow: without one the kernels skip the backward's extra sums and
    # impl="torch" keeps nothing per row block
    for_backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                   for t in (x, means, log_var, log_prior))
    if impl == "torch":
        out, sample = gmvq_eager(x, means, log_var, log_prior, tau, hard, seed, noise, for_backward)
    elif impl == "reference":
        if torch.compiler.is_compiling():  # tau is checked when the graph runs (see checks.checked_tau)
            tau = checked_tau(torch.ones((), dtype=torch.float64) * tau)
        if x.device.type == "cpu" and not torch.compiler.is_compiling():  # compiled: one fused graph
            out, sample = reference_forward_blocks(x, means, log_var, log_prior, tau, hard, seed, noise,
                                                   config.reference_rows(x.shape[0], means.shape[0]))
        else:
            out, sample = reference_forward(x, means, log_var, log_prior, tau, hard, seed, noise)
    else:
        log_var32 = log_var.float()
        if capturing_graph():  # the custom op: tau and seed as tensors (see autograd.py)
            op, tau, seed = fused_fwd, torch.ones((), dtype=torch.float64) * tau, seed_tensor(seed)
        else:  # see EagerFused: the numbers themselves
            op = EagerFused.apply
        # None for the uniform prior: the op forms −log K itself (tiles.code_terms)
        log_pi = None if log_prior is None else log_prior_probs(log_prior, means.shape[0], log_var32)
        outs = op(x.contiguous(), means.contiguous(), log_var32, log_pi,
                  None if noise is None else noise.float().contiguous(),
                  tau, bool(hard), seed, dot_precision or config.DEFAULT_DOT_PRECISION, for_backward)
        out = GMVQOutput(*outs[:len(GMVQOutput._fields)])
        hard_idx = outs[len(GMVQOutput._fields) + SAVED_FIELDS.index("hard_idx")]
        sample = torch.where(out.codes < 0, out.codes, hard_idx) if hard else None
    if process_group is not None:
        out = with_fields(out, agg_posterior=_global_agg_posterior(out.agg_posterior, x.shape[0], process_group))
    return out, sample


def gmvq_encode(x, means, log_var, log_prior=None, *, impl: str = "auto",
                dot_precision: Optional[str] = None) -> torch.Tensor:
    """Tokenizer path: codes = argmax_k ℓ_nk (N,) int64, the ``codes`` of ``gmvq`` without anything
    else (no noise, no softmax, no q̄, no gradient). Arguments as for ``gmvq``; −1 for a row of x that
    is not finite. On CUDA (or under TRITON_INTERPRET=1) one fused pass over the codebook (memory
    O(N + K·D)); the reference computes the logits of 4096 rows at a time. Under torch.autocast x and
    means are cast as ``gmvq`` casts them: the codes ``gmvq`` returns there."""
    validate(x, means, log_var, log_prior, 1.0, False, None, 0, impl, dot_precision)
    x, means = to_autocast(x), to_autocast(means)  # as gmvq's: the codes it returns
    impl = resolve_impl(impl, x)
    if impl in ("torch", "reference"):  # no gradient to hand-derive: the chunked reference is the torch path
        return gmvq_encode_reference(x, means, log_var, log_prior)
    log_pi = None if log_prior is None else log_prior_probs(log_prior.detach(), means.shape[0], log_var.float())
    op = fused_encode if capturing_graph() else encode_codes  # eager: without the custom op's dispatch
    return op(x.detach().contiguous(), means.detach().contiguous(), log_var.detach().float(), log_pi,
              dot_precision or config.DEFAULT_DOT_PRECISION)


def gmvq_decode(codes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The means of ``codes`` (any shape) as codes.shape + (D,); code −1 (a non-finite latent) gives
    NaN, never a real code. The range [−1, K) is checked on CPU tensors; on CUDA (no host sync) any
    negative code gives NaN and a code ≥ K fails torch's indexing assertion."""
    check_codes(codes)
    K = means.shape[0]
    if not torch.compiler.is_compiling() and codes.device.type == "cpu":
        check_code_range(codes, -1, K, f"[-1, {K}) for a codebook of {K} codes")
    idx = codes.long()
    return means[idx.clamp_min(0)].masked_fill((idx < 0)[..., None], float("nan"))
