"""``impl="torch"``: the fused op in plain torch ops for a CPU (what ``impl="auto"`` runs there; under
torch.compile the same code as the custom ops ``rows_fwd`` / ``rows_bwd`` where the C passes are built,
else ``functional.resolve_impl`` takes the reference).

The reference differentiated by autograd is the ground truth, and slow as a training step: autograd
keeps and revisits every N×K intermediate of its ops. Here the forward takes the batch in row blocks
(a block's (rows, K) temporaries stay in cache, ``config.reference_rows``) and keeps d·a and the soft
sample y per block (and q in torch ops; the C backward forms q again from each row's
1 / Σ_k exp(ℓ − m)); the backward applies the hand-derived gradients of
docs/design.md §2, the kernels' formulas, block by block (four matrix products; the terms of an absent
upstream gradient are skipped). The products are torch's; the per-element work of a block runs in C
(cpu_rows.py: five passes over a row forward, three backward) where that library is built, else in
torch ops (``_rows_torch``, ``_e_torch``: ~15 passes over the block each way). Three shifts that
leave the gradients unchanged keep them accurate: Y by its value at each row's likeliest sample code
before Δy = Σ_k y Y is formed (Y − Δy cancels where y is peaked), Ḡ_q̄ likewise by its value at the
row's likeliest code before Δq = Σ_k q Ḡ_q̄ (where q is), and x and μ taken relative to the codebook's
mean (a common offset of the latents cancels before the products that form dx and dμ). It returns the gradients of the per-code
constants a, b, v (``spec.component_terms``), and autograd carries them on to log σ² and the prior
logits. Memory is O(N·K), as the reference's: the blocks' kept tensors cover the whole batch (the
N×K-free op is the kernels'); without a backward to follow, nothing is kept and it is one block's
temporaries.

Values are the reference's up to rounding (tests/test_eager.py: float64 to 1e-10, gradients included;
fp32 and half by the three-way rule the kernels meet). Where a code's y is below float64's resolution
of 1 (y ≈ 10⁻¹⁹), the shift keeps that code's term and the reference's float64 softmax backward loses
it: there this is the more accurate of the two (README, "Correctness"). The noise is
``gumbel_noise(N, K, seed)``'s: drawn by the C forward pass row by row as it reaches each row where
``gumbel_noise`` would take the C twin (``noise.c_twin_draws``), else drawn block by block
(``row_offset``) as the forward reaches each block. No double backward (``impl="reference"`` for that).
"""
import inspect
import math
from typing import Optional

import torch
from torch import Tensor

from . import config, cpu_rows
from .checks import check_tau
from .noise import c_twin_draws, gumbel_noise, seed_tensor
from .spec import (DIFF_OUTPUTS, GMVQOutput, autocast_off, capturing_graph, component_terms, log_prior_probs,
                   stats_dtype, with_fields)


def gmvq_eager(x, means, log_var, log_prior, tau, hard, seed, noise, for_backward=True):
    """(GMVQOutput, sample_codes) as ``reference.reference_forward``, computed as the module docstring says.
    for_backward False (no input needs a gradient, or grad mode is off): nothing is kept for a backward,
    so memory stays at one row block's temporaries. Under torch.compile the C passes' path as the
    custom ops ``rows_fwd`` / ``rows_bwd`` (``functional.resolve_impl`` comes here then only where the
    C library is built)."""
    dt = stats_dtype(x.dtype)
    with autocast_off(x.device.type):
        lv = log_var.to(dt)
        a, b, v = component_terms(lv, log_prior_probs(log_prior, means.shape[0], lv), x.shape[1])
        if capturing_graph():
            outs = rows_fwd(x.to(dt), means.to(dt), a, b, v, noise, torch.ones((), dtype=torch.float64) * tau,
                            bool(hard), seed_tensor(seed), bool(for_backward))
            *outs, sample = outs[:len(GMVQOutput._fields) + 1]
        else:
            # the per-element work in C where that library is built (read once per call: the backward
            # follows the forward's choice), else in torch ops
            lib = cpu_rows.rows_library() if x.device.type == "cpu" else None
            *outs, sample = _EagerGMVQ.apply(x.to(dt), means.to(dt), a, b, v, noise, float(tau), bool(hard), seed,
                                             block_rows(x, means, lib), bool(for_backward), lib)
    out = GMVQOutput(*outs)
    return with_fields(out, quantized=out.quantized.to(x.dtype)), sample if hard else None


def block_rows(x, means, lib):
    """Rows per row block: ~2²⁰ (n, k) elements with the C library ``lib``, ~2¹⁸ with the torch ops."""
    elems = config.EAGER_C_BLOCK_ELEMS if lib is not None else None
    return config.reference_rows(x.shape[0], means.shape[0], config.EAGER_MIN_ROWS, elems)


def _row_argmax(t):
    """t.argmax(1) (the first maximum; NaN counts as the largest, as torch's): by NumPy's on a CPU, whose
    SIMD argmax took 25 against torch's 121 µs on a 512 × 512 fp32 block here."""
    if t.device.type != "cpu":
        return t.argmax(1)
    return torch.from_numpy(t.detach().numpy().argmax(1)).to(torch.int64)


def _forward_block(x, means, a, b, v, mm, noise, tau, hard, for_backward, lib, seed=None, row_offset=0, kept=None):
    """Outputs of one row block (GMVQOutput order, q̄'s column sums in its place), its sample codes
    (or None; −1 on a non-finite row) and what its backward reads: (d·a, q, y, the sample or None, the
    mask where the distance clamp stops the gradient or None, the rows' max ℓ m, Σ_k q (ℓ − m), its
    argmax, the argmax of y, the C row library or None, 1 / Σ_k exp(ℓ − m) or None); None unless
    ``for_backward``. The per-element work runs in C (cpu_rows.py) with ``lib``, the library, else in
    torch ops (``_rows_torch``). In C it keeps two N×K tensors (d·a, y; q is formed again from
    1 / Σ_k exp(ℓ − m)), in torch ops three. ``noise`` None (C only): the pass draws the noise of rows
    row_offset.. of ``seed`` itself. ``kept`` (C only): where to write d·a and y, the block's rows of the
    batch's two tensors, or None."""
    x_sq = (x * x).sum(1)
    if lib is None:
        da, q, y, codes, top, m, lse, entropy, q_ell, latent_nll, q_sum, stopped = _rows_torch(
            x, x_sq, means, a, b, mm, noise, tau, hard, for_backward)
        q_inv = None
    else:  # d·a in place of x·μᵀ; its sign marks where the clamp stops the gradient
        da = torch.mm(x, means.T, out=None if kept is None else kept[0])
        y, codes, top, m, q_inv, lse, entropy, q_ell, latent_nll, q_sum = cpu_rows.forward(
            lib, da, x_sq, mm, a, b, noise, tau, hard, seed, row_offset, None if kept is None else kept[1])
        q = stopped = None
    if hard:
        sample = top
        quantized, mixture_var = means[sample], v[sample]
    else:
        sample = None
        # two products: one of width D + 1 (σ² as a column of μ) took longer than both (MKL, D = 32)
        quantized, mixture_var = y @ means, y @ v
    best = codes[:, None]  # ℓ's argmax (the backward's shift of Ḡ_q̄), before the NaN policy's −1
    bad = ~(x_sq < math.inf)  # NaN policy (README): a non-finite row is NaN with code −1
    if bad.any():
        nan = float("nan")
        quantized = quantized.masked_fill(bad[:, None], nan)
        lse, latent_nll, mixture_var, entropy = (t.masked_fill(bad, nan) for t in (lse, latent_nll, mixture_var,
                                                                                    entropy))
        codes = codes.masked_fill(bad, -1)
    outs = (quantized, codes, lse, q_sum, latent_nll, mixture_var, entropy)
    saved = (da, q, y, sample, stopped, m[:, None], q_ell, best, top, lib, q_inv) if for_backward else None
    return outs, None if sample is None else sample.masked_fill(bad, -1), saved


def _rows_torch(x, x_sq, means, a, b, mm, noise, tau, hard, for_backward):
    """The per-element work of ``_forward_block`` in torch ops: (d·a, q, y, codes, the argmax of y (None
    when neither hard nor for_backward), m, lse, entropy, Σ_k q (ℓ − m), latent_nll (soft: Σ_k y d·a;
    hard: d·a at the sample), q's column sums, the clamp's mask or None)."""
    d = torch.addmm(x_sq[:, None], x, means.T, alpha=-2.0).add_(mm)  # the reference's order of sums
    # where the clamp at 0 is active (raw d < 0 by rounding, x ≈ μ_k) or d is NaN (a non-finite row) no
    # gradient flows through d, as torch.clamp_min's. Rare, so its mask is formed only when the block's
    # minimum says it is needed (a comparison into a bool tensor costs a CPU ~10× a min-reduction)
    stopped = None if bool(d.amin() >= 0.0) else ~(d >= 0.0)
    da = d.clamp_min_(0.0).mul_(a)  # d·a in place: the backward keeps d·a alone (and re-forms d from it)
    ell = torch.sub(b, da)
    q = torch.softmax(ell, 1)
    codes = _row_argmax(ell)
    best = codes[:, None]
    m = ell.gather(1, best)[:, 0]  # the row maximum: q there is 1/Σ_k exp(ℓ_k − m), so log Σ = −log q_best
    log_sum = -q.gather(1, best).log_()[:, 0]
    # H = log Σ − Σ_k q (ℓ − m), as the kernels form it: no log_softmax pass (~80 µs a 512 × 512 block)
    q_ell = torch.linalg.vecdot(q, ell - m[:, None])
    noisy = ell.add_(noise)  # ℓ is not needed after this
    if tau != 1.0:
        noisy.div_(tau)
    y = torch.softmax(noisy, 1)
    # y's likeliest code: the hard sample, and the backward's shift of Y (~50 µs a 512 × 512 block)
    top = _row_argmax(noisy) if hard or for_backward else None
    latent_nll = da.gather(1, top[:, None])[:, 0] if hard else torch.linalg.vecdot(y, da)
    return da, q, y, codes, top, m, m + log_sum, log_sum - q_ell, q_ell, latent_nll, q.sum(0), stopped


def _backward_block(x, means, a, b, v, saved, g, tau, N):
    """One row block's part of docs/design.md §2, with E = dℓ − Ḡ_lat y_val and e = E·a = −dd (the
    design's dd, negated: no negation pass): (dx, 2 Σ_n e x_n + Σ_n y_val Ḡ_z (dμ but its μ Σ_n dd
    term), Σ_n e, Σ_n dℓ, Σ_n E d, Σ_n Ḡ_s y_val or None). ``g``: the upstream gradients of
    DIFF_OUTPUTS for these rows (None where absent). e comes from C where the forward ran there
    (cpu_rows.py), else from torch ops (``_e_torch``); the products are torch's either way."""
    da, q, y, sample, stopped, m, q_ell, best, top, lib, q_inv = saved
    gz, glse, gq, glat, gs, gH = (g[name] for name in DIFF_OUTPUTS)
    # Y/τ = (Ḡ_z μ_k + Ḡ_s σ_k² + Ḡ_lat d_nk a_k)/τ; then dℓ = y (Y − Δy)/τ with Δy = Σ_k y Y
    gz_mu = None if gz is None else (gz / tau) @ means.T
    if lib is None:
        e, e_sum, db, ga, cs = _e_torch(da, q, y, sample, stopped, m, q_ell, best, top, gz_mu, g, tau, N, a, b, v)
    else:
        e = torch.empty_like(da) if gz_mu is None else gz_mu
        e_sum, db, ga, cs = cpu_rows.backward(
            lib, e, gz_mu is not None, da, q_inv, y, v, a, b, None if gs is None else gs / tau,
            None if glat is None else glat / tau, glat, glse, gH, None if gq is None else gq / N, top, best,
            sample, m, q_ell)
    dx = torch.addmm(x * e_sum[:, None], e, means, beta=-2.0, alpha=2.0)
    dm = (e.T @ x).mul_(2.0)
    if gz is not None:
        if sample is None:
            dm.addmm_(y.T, gz)
        else:
            dm.index_add_(0, sample, gz)
    if gs is None:
        dv = None
    elif sample is None:
        dv = gs @ y
    else:
        dv = torch.zeros_like(v).index_add_(0, sample, gs)
    return dx, dm, cs, db, ga, dv


def _e_torch(da, q, y, sample, stopped, m, q_ell, best, top, dl, g, tau, N, a, b, v):
    """The per-element work of ``_backward_block`` in torch ops, from dl = (Ḡ_z/τ)·μᵀ or None: (e, its
    row sums, Σ_n dℓ, Σ_n (d·a/a)·E, Σ_n e)."""
    gz, glse, gq, glat, gs, gH = (g[name] for name in DIFF_OUTPUTS)
    if gs is not None:  # a rank-1 term: one pass (a column of σ² beside μ was a (K, D + 1) copy per block)
        dl = torch.outer(gs / tau, v) if dl is None else dl.addr_(gs / tau, v)
    if glat is not None:
        dl = torch.mul(da, (glat / tau)[:, None]) if dl is None else dl.addcmul_(da, (glat / tau)[:, None])
    if dl is not None:
        # Y − Δy cancels where y is peaked (small τ, large |Y|): shifted first by Y at each row's likeliest
        # code, which leaves it unchanged (Σ_k y = 1), Δy is a sum of small terms, and that code's Y − Δy
        # comes out to fp32 accuracy instead of ~2⁻²⁴|Y| (the random sweep: dx 10⁻⁴ off at τ = 0.19)
        dl.sub_(dl.gather(1, top[:, None]))
        dl.sub_(torch.linalg.vecdot(y, dl)[:, None]).mul_(y)
    # + q (Ḡ_lse + (Ḡ_q̄_k − Δq)/N − Ḡ_H (log q + H)), Δq = Σ_k q Ḡ_q̄
    if glse is not None or gq is not None or gH is not None:
        row = q.new_zeros(q.shape[0]) if glse is None else glse.clone()
        if gH is not None:  # log q + H = (ℓ − m) − Σ_k q (ℓ − m) (Σ_k q = 1): no log_softmax pass
            row += gH * q_ell
        if gq is None:
            c = row[:, None]
        else:  # Ḡ_q̄ − Δq cancels where q is peaked: shifted as Y above, by Ḡ_q̄ at each row's likeliest code
            gq = gq / N
            c = torch.sub(gq, gq[best])
            c.add_((row - torch.linalg.vecdot(q, c))[:, None])
        if gH is not None:  # ℓ − m as the forward formed it: exactly 0 at the top code
            c = torch.addcmul(c, torch.sub(b, da).sub_(m), gH[:, None], value=-1.0)
        dl = torch.mul(q, c) if dl is None else dl.addcmul_(q, c)
    if dl is None:
        dl = torch.zeros_like(q)
    db = dl.sum(0)
    # E = dℓ − Ḡ_lat y_val (y_val: the soft sample, or the one-hot of the hard one)
    if glat is not None:
        if sample is None:
            dl.addcmul_(y, glat[:, None], value=-1.0)
        else:
            dl.scatter_add_(1, sample[:, None], -glat[:, None])
    e = dl
    # Σ_n E d with d re-formed from d·a (a ≥ 5e-14 for |log σ²| ≤ 30): Σ_n E (d·a), divided by a after
    # the sum, overflows fp32 at the corners of the supported range (σ² = 1e-13, ‖x‖ = 1e6, τ = 1e-4).
    # A product then a column sum: vecdot over dim 0 took 630 against ~200 µs a 512 × 512 block where E
    # is mostly denormal (a softmax of logits spread by ≥ 87), the same elsewhere
    ga = (da / a).mul_(e).sum(0)
    e.mul_(a)  # −dd
    if stopped is not None:
        e.masked_fill_(stopped, 0.0)
    return e, e.sum(1), db, ga, e.sum(0)


def _forward_blocks(x, means, a, b, v, noise, tau, hard, seed, rows, for_backward, lib):
    """The batch in row blocks: (GMVQOutput fields, sample codes (empty when soft), the blocks' saved
    tuples (``_forward_block``) or None, (d·a, y) or None). With the C library and a backward to follow,
    the blocks write d·a and y into those two (N, K) tensors of the whole batch (``rows_fwd`` returns
    them; the blocks' saved tuples hold their rows)."""
    N, K = x.shape[0], means.shape[0]
    mm = (means * means).sum(1)  # in the computation dtype (spec.code_sq_norms is the kernels' fp32)
    # the noise: drawn by the C row passes as they reach each row where gumbel_noise would draw it in
    # C, else drawn (or sliced) as its row block is reached: still in cache when the block adds it
    in_pass = noise is None and lib is not None and c_twin_draws(x.device)
    kept = (x.new_empty(N, K), x.new_empty(N, K)) if lib is not None and for_backward else None

    def block_noise(i):
        if in_pass:
            return None
        if noise is not None:
            return noise[i:i + rows].to(x.dtype)
        return gumbel_noise(min(rows, N - i), K, seed, device=x.device, row_offset=i).to(x.dtype)

    blocks = [_forward_block(x[i:i + rows], means, a, b, v, mm, block_noise(i), tau, hard, for_backward, lib,
                             seed, i, None if kept is None else (kept[0][i:i + rows], kept[1][i:i + rows]))
              for i in range(0, N, rows)]
    names = GMVQOutput._fields
    out = [(sum(blk[0][j] for blk in blocks) / N if name == "agg_posterior"  # column sums → q̄
            else torch.cat([blk[0][j] for blk in blocks])) for j, name in enumerate(names)]
    sample = torch.cat([blk[1] for blk in blocks]) if hard else out[names.index("codes")].new_empty(0)
    return out, sample, [blk[2] for blk in blocks] if for_backward else None, kept


def _backward_blocks(x, means, a, b, v, blocks, upstream, tau, rows):
    """Gradients (x, means, a, b, v or None) from the upstream gradients of the GMVQOutput fields
    (None where absent), block by block (``_backward_block``)."""
    # dx = 2 Σ_k e (μ_k − x) and dμ_k = 2 Σ_n e (x_n − μ_k) are formed as differences of products, which
    # cancel the latents' common offset from the origin: taken relative to the codebook's mean, the
    # products carry the spread alone (the same gradients; Y − Δy ignores a shift of every μ_k)
    center = means.mean(0)
    x, means = x - center, means - center
    grads = dict(zip(GMVQOutput._fields, upstream))
    N = x.shape[0]
    dx = torch.empty_like(x)
    dm = torch.zeros_like(means)
    cs, db, ga = (torch.zeros_like(a) for _ in range(3))
    dv = None
    for blk, i in zip(blocks, range(0, N, rows)):
        sl = slice(i, i + rows)
        g = {name: None if grads[name] is None else grads[name] if name == "agg_posterior" else grads[name][sl]
             for name in DIFF_OUTPUTS}
        bx, bm, bcs, bdb, bga, bdv = _backward_block(x[sl], means, a, b, v, blk, g, tau, N)
        dx[sl] = bx
        dm += bm
        cs += bcs
        db += bdb
        ga += bga
        if bdv is not None:
            dv = bdv if dv is None else dv.add_(bdv)
    dm.addcmul_(means, cs[:, None], value=-2.0)
    # ℓ = b − d·a: ∂/∂a = −Σ_n dℓ d + (latent_nll's Σ_n Ḡ_lat y_val d) = −Σ_n E d
    return dx, dm, ga.neg_(), db, dv


_SAVED = object()  # _EagerGMVQ's context: a block's entry that save_for_backward holds


class _EagerGMVQ(torch.autograd.Function):
    """Row blocks forward, docs/design.md §2 backward; inputs x, means in the computation dtype and
    a, b, v (K,) (spec.component_terms). Returns the GMVQOutput fields and the sample codes."""

    @staticmethod
    def forward(ctx, x, means, a, b, v, noise, tau, hard, seed, rows, for_backward, lib):
        out, sample, blocks, _ = _forward_blocks(x, means, a, b, v, noise, tau, hard, seed, rows, for_backward, lib)
        ctx.set_materialize_grads(False)
        # the blocks' tensors through save_for_backward, their other entries (None, the C library) on ctx:
        # activation checkpointing frees saved tensors (the (rows, K) ones here), not tensors on ctx
        blocks = blocks or ()  # None without a backward to follow
        ctx.blocks = [tuple(_SAVED if isinstance(t, torch.Tensor) else t for t in blk) for blk in blocks]
        ctx.tau, ctx.rows = tau, rows
        ctx.save_for_backward(x, means, a, b, v, *(t for blk in blocks for t in blk if isinstance(t, torch.Tensor)))
        ctx.mark_non_differentiable(sample, out[GMVQOutput._fields.index("codes")])
        return (*out, sample)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *upstream):
        x, means, a, b, v, *tensors = ctx.saved_tensors
        it = iter(tensors)
        blocks = [tuple(next(it) if t is _SAVED else t for t in blk) for blk in ctx.blocks]
        with autocast_off(x.device.type):  # a backward inside an autocast region (spec.autocast_off)
            return (*_backward_blocks(x, means, a, b, v, blocks, upstream, ctx.tau, ctx.rows),) + (None,) * 7


# Under torch.compile, the C passes' path as two custom ops (opaque to it; ``gmvq_eager``): the forward
# returns the GMVQOutput fields, the sample codes (empty when soft) and ROWS_SAVED, what its backward
# reads (empty without a backward): d·a and y (N, K), and per row 1 / Σ_k exp(ℓ − m), m, Σ_k q (ℓ − m),
# ℓ's argmax before the NaN policy and the argmax of ℓ + g. tau and seed come as 0-dim tensors (as the
# kernels' ops take them: a float would be a guard on its value). Names versioned as autograd.py's.
ROWS_SAVED = ("d_a", "y", "q_inv", "m", "q_ell", "best", "top")
ROWS_OP_VERSION = 1


def _c_library():
    lib = cpu_rows.rows_library()
    if lib is None:  # the choice is made as the graph is traced (functional.resolve_impl)
        raise RuntimeError("gmvq_kernels: a graph compiled with impl=\"torch\"'s C row passes runs without them "
                           f"({cpu_rows.C_ROWS_ENV}=0 since, or the library unavailable); compile it again")
    return lib


def _rows_fwd(x: Tensor, means: Tensor, a: Tensor, b: Tensor, v: Tensor, noise: Optional[Tensor], tau: Tensor,
              hard: bool, seed: Tensor, for_backward: bool) -> tuple[(Tensor,) * (len(GMVQOutput._fields) + 1
                                                                                  + len(ROWS_SAVED))]:
    check_tau(float(tau))  # under torch.compile ``gmvq`` leaves the value check to the op (as the kernels')
    lib = _c_library()
    out, sample, blocks, kept = _forward_blocks(x, means, a, b, v, noise, float(tau), hard, seed,
                                                block_rows(x, means, lib), for_backward, lib)
    if not for_backward:
        return (*out, sample, *_rows_fwd_fake(x, means, hard, False)[len(out) + 1:])
    # the blocks' per-row tensors, whole: q_inv, m, q_ell, best and top (their places in the saved tuple)
    rows = [torch.cat([blk[j] for blk in blocks]).view(-1) for j in (10, 5, 6, 7, 8)]
    return (*out, sample, *kept, *rows)


def _rows_fwd_fake(x, means, hard, for_backward):
    """``rows_fwd``'s outputs, empty (its fake; without a backward, also its saved ones)."""
    N, K = x.shape[0], means.shape[0]
    n, k = (N, K) if for_backward else (0, 0)
    vec = lambda size, dtype=None: x.new_empty(size, dtype=dtype)  # noqa: E731
    outputs = [torch.empty_like(x), vec(N, torch.int64)] + [vec(K if name == "agg_posterior" else N)
                                                            for name in GMVQOutput._fields[2:]]
    saved = [vec((n, k)), vec((n, k)), vec(n), vec(n), vec(n), vec(n, torch.int64), vec(n, torch.int64)]
    return (*outputs, vec(N if hard else 0, torch.int64), *saved)


rows_fwd = torch.library.custom_op(f"gmvq_kernels::rows_fwd_v{ROWS_OP_VERSION}", mutates_args=())(_rows_fwd)
rows_fwd.register_fake(lambda x, means, a, b, v, noise, tau, hard, seed, for_backward:
                       _rows_fwd_fake(x, means, hard, for_backward))


def _rows_bwd(x: Tensor, means: Tensor, a: Tensor, b: Tensor, v: Tensor, d_a: Tensor, y: Tensor, q_inv: Tensor,
              m: Tensor, q_ell: Tensor, best: Tensor, top: Tensor, g_quantized: Optional[Tensor],
              g_log_likelihood: Optional[Tensor], g_agg_posterior: Optional[Tensor], g_latent_nll: Optional[Tensor],
              g_mixture_var: Optional[Tensor], g_entropy: Optional[Tensor], tau: Tensor,
              hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, means, a, b, v; v's zeros without Ḡ_s) from ``rows_fwd``'s saved tensors."""
    lib = _c_library()
    rows = block_rows(x, means, lib)
    blocks = [(d_a[i:i + rows], None, y[i:i + rows], top[i:i + rows] if hard else None, None, m[i:i + rows, None],
               q_ell[i:i + rows], best[i:i + rows, None], top[i:i + rows], lib, q_inv[i:i + rows])
              for i in range(0, x.shape[0], rows)]
    given = locals()
    upstream = [given.get("g_" + name) for name in GMVQOutput._fields]
    dx, dm, da, db, dv = _backward_blocks(x, means, a, b, v, blocks, upstream, float(tau), rows)
    return dx, dm, da, db, torch.zeros_like(v) if dv is None else dv


assert [p for p in inspect.signature(_rows_bwd).parameters if p.startswith("g_")] == \
    ["g_" + name for name in DIFF_OUTPUTS], "rows_bwd takes one g_<name> per spec.DIFF_OUTPUTS, in that order"
rows_bwd = torch.library.custom_op(f"gmvq_kernels::rows_bwd_v{ROWS_OP_VERSION}", mutates_args=())(_rows_bwd)
rows_bwd.register_fake(lambda x, means, a, b, v, *args: (torch.empty_like(x), torch.empty_like(means),
                                                          torch.empty_like(a), torch.empty_like(b),
                                                          torch.empty_like(v)))

ROWS_INPUTS = ("x", "means", "a", "b", "v", "noise", "tau", "hard", "seed", "for_backward")


def _rows_setup_context(ctx, inputs, output):
    inp = dict(zip(ROWS_INPUTS, inputs))
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*(inp[n] for n in ("x", "means", "a", "b", "v")),
                          *output[len(GMVQOutput._fields) + 1:], inp["tau"])
    ctx.hard = inp["hard"]


def _rows_backward(ctx, *upstream):
    grads = [upstream[GMVQOutput._fields.index(name)] for name in DIFF_OUTPUTS]
    if all(g is None for g in grads):
        return (None,) * len(ROWS_INPUTS)
    *saved, tau = ctx.saved_tensors
    result = rows_bwd(*saved, *grads, tau, ctx.hard)
    return tuple(g if need else None for g, need in zip(result, ctx.needs_input_grad)) + (None,) * 5


rows_fwd.register_autograd(_rows_backward, setup_context=_rows_setup_context)


def _rows_no_double_backward(ctx, *grads):
    raise NotImplementedError("gmvq_kernels: double backward (gradients of gradients) through impl=\"torch\" is not "
                              "supported; use impl='reference' for higher-order derivatives")


rows_bwd.register_autograd(_rows_no_double_backward)
