"""Shared test helpers: forward + backward with upstream gradients by name, and the three-way check of an
impl against the reference (``check_case``: the kernels, and impl="torch"); the input factory and the
three-way rule live in gmvq_kernels.testing (gpu_check.py applies the same rule on a GPU)."""
import torch

import gmvq_kernels as gk
from gmvq_kernels.spec import DIFF_OUTPUTS
from gmvq_kernels.testing import HALF_ABS_REL, REL_TOL, assert_three_way, make_inputs  # noqa: F401  (re-exported)

OUT_FIELDS = gk.GMVQOutput._fields


def run(inputs, impl, *, cast=None, upstream=None, **kw):
    """Forward (+ backward with a shared upstream gradient for every float output) of gk.gmvq.
    ``upstream``: {output name: gradient or None}; by default a random one for every output of
    ``GMVQOutput`` that carries a gradient. Returns (outputs, grads of x, means, log_var, log_prior
    (None if absent), upstream)."""
    leaves = [None if t is None else t.detach().clone().to(cast or t.dtype).requires_grad_(True) for t in inputs]
    out = gk.gmvq(*leaves, impl=impl, **kw)
    if upstream is None:
        g = torch.Generator().manual_seed(1234)
        upstream = {name: torch.randn(getattr(out, name).shape, generator=g, dtype=torch.float64)
                    .to(getattr(out, name).device) for name in DIFF_OUTPUTS}
    loss = sum((getattr(out, name).double() * u).sum() for name, u in upstream.items() if u is not None)
    loss.backward()
    return out, [None if t is None else t.grad for t in leaves], upstream


def check_case(N, K, D, device, *, impl="triton", dtype=torch.float32, hard=False, prior=False, tau=1.0,
               explicit_noise=False, seed=7, upstream_only=None, dot_precision="ieee", scale=1.0,
               log_var_scale=0.3, offset=0.0, near_codes=0.0, agg_shift=0.0, truth="reference"):
    """``impl`` against the reference by the three-way rule (gmvq_kernels.testing), every output and
    gradient: the float64 reference is the ground truth, the reference at the test precision (as is,
    and on three permutations, ``permuted_reference``) plain PyTorch's rounding. ``truth="torch"``
    takes impl="torch" in float64 as the ground truth instead: a second float64 evaluation, for a case
    where the reference's own float64 rounding is in doubt (tests/random_sweep.py)."""
    inputs = make_inputs(N, K, D, dtype=dtype, prior=prior, device=device, seed=N * 1000 + K + D,
                         scale=scale, log_var_scale=log_var_scale, offset=offset, near_codes=near_codes)
    noise = gk.gumbel_noise(N, K, seed=seed, device=device) if explicit_noise else None
    kw = dict(tau=tau, hard=hard, seed=seed, noise=noise)
    # the reference sees exactly the in-kernel noise through gumbel_noise
    ref_noise = noise if noise is not None else gk.gumbel_noise(N, K, seed=seed, device=device)
    ref_kw = dict(kw, noise=ref_noise)
    gt, gt_grads, up = run([t.cpu() if t is not None else None for t in inputs], truth,
                           cast=torch.float64, **dict(ref_kw, noise=ref_noise.cpu().double()))
    if upstream_only is not None or agg_shift:  # only these outputs send a gradient; Ḡ_q̄ shifted
        up = {name: u if upstream_only is None or name in upstream_only else None for name, u in up.items()}
        if up["agg_posterior"] is not None:
            up["agg_posterior"] = up["agg_posterior"] + agg_shift
        gt, gt_grads, _ = run([t.cpu() if t is not None else None for t in inputs], truth,
                              cast=torch.float64, upstream=up, **dict(ref_kw, noise=ref_noise.cpu().double()))
    up_dev = {name: None if u is None else u.to(device) for name, u in up.items()}
    refs = [run(inputs, "reference", upstream=up_dev, **ref_kw)[:2]]
    refs += [permuted_reference(inputs, up_dev, ref_kw, perm_seed=i) for i in range(3)]
    out, grads, _ = run(inputs, impl, upstream=up_dev, dot_precision=dot_precision, **kw)
    tol = REL_TOL[dtype]
    half = dtype != torch.float32
    for i, (name, o, g) in enumerate(zip(OUT_FIELDS, out, gt)):
        if name == "codes":
            assert torch.equal(o.cpu(), g), f"codes differ at {(o.cpu() != g).nonzero().flatten().tolist()}"
        else:
            assert_three_way(name, o, [r[0][i] for r in refs], g, tol)
            if half:
                assert_three_way(name, o, [g], g, HALF_ABS_REL)
    for i, (name, o, g) in enumerate(zip(["dx", "dmeans", "dlog_var", "dlog_prior"], grads, gt_grads)):
        if g is None:
            assert o is None or not o.abs().any(), name
            continue
        assert o is not None, f"{name}: no gradient from {impl}"
        assert_three_way(name, o, [r[1][i] for r in refs], g, tol)
        if half:
            assert_three_way(name, o, [g], g, HALF_ABS_REL)


def permuted_reference(inputs, upstream, ref_kw, perm_seed):
    """The reference at the test precision on permuted rows, codes and latent axes (then un-permuted):
    the same math rounded differently — every norm, dot and sum runs in another order, including the
    distance expansion ||x||² + ||μ||² − 2x·μ whose cancellation dominates fp32 error at large scales.
    Another sample of plain PyTorch's rounding noise."""
    x, m, lv, lp = inputs
    (N, D), K = x.shape, m.shape[0]
    g = torch.Generator().manual_seed(N + 31 * K + 1000 * perm_seed)
    pn, pk, pd = (torch.randperm(n, generator=g).to(x.device) for n in (N, K, D))
    inv_n, inv_k, inv_d = torch.argsort(pn), torch.argsort(pk), torch.argsort(pd)
    kw = dict(ref_kw, noise=ref_kw["noise"][pn][:, pk])
    # permute each upstream gradient like its output: rows (and D for quantized), or codes for q̄
    permute = {"quantized": lambda t: t[pn][:, pd], "agg_posterior": lambda t: t[pk]}
    up = {name: None if u is None else permute.get(name, lambda t: t[pn])(u) for name, u in upstream.items()}
    out, grads, _ = run([x[pn][:, pd], m[pk][:, pd], lv[pk], None if lp is None else lp[pk]], "reference",
                        upstream=up, **kw)
    out = [o[inv_k] if name == "agg_posterior" else o[inv_n] for name, o in zip(OUT_FIELDS, out)]
    out[0] = out[0][:, inv_d]
    grads = [grads[0][inv_n][:, inv_d], grads[1][inv_k][:, inv_d]] + \
        [None if t is None else t[inv_k] for t in grads[2:]]
    return out, grads
