"""No silent NaN or wrong answer: the NaN policy in every impl, the half-precision reference computed in
fp32, tau checked under torch.compile for the reference and the kernels ("torch" traces the reference
there), non-finite explicit noise rejected, and finite ALBO gradients where a code is out of reach."""
import pytest
import torch

import gmvq_kernels as gk

from utils import OUT_FIELDS, REL_TOL, assert_three_way, make_inputs

ROW_FIELDS = ("log_likelihood", "latent_nll", "mixture_var", "entropy")


def impl_of(impl, monkeypatch):
    """"triton-split": the kernels with the codebook split across programs (config.split_codes, the
    GPU path at small N), forced by a small SM count."""
    if impl == "triton-split":
        from gmvq_kernels import config

        monkeypatch.setattr(config, "sm_count", lambda dev: 8)
        monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
        return "triton"
    return impl


@pytest.mark.parametrize("impl", ["reference", "torch", "triton", "triton-split"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_non_finite_rows_are_nan_with_code_minus_one(impl, hard, device, monkeypatch):
    """x rows holding NaN, +inf, or a squared norm past fp32 give NaN outputs and code −1 in every impl
    and mode, q̄ is NaN, and the other rows are exactly what they are without the bad rows."""
    impl = impl_of(impl, monkeypatch)
    x, m, lv, lp = make_inputs(9, 37, 6, prior=True, device=device)
    bad_rows = [1, 4, 7]
    xb = x.clone()
    xb[1, 2] = float("nan")
    xb[4, 0] = float("inf")
    xb[7] = 3e19  # finite, but ||x||² overflows fp32: outside the supported range
    kw = dict(tau=0.7, hard=hard, seed=5, impl=impl)
    out = gk.gmvq(xb, m, lv, lp, **kw)
    good = [i for i in range(9) if i not in bad_rows]
    clean = gk.gmvq(x, m, lv, lp, **dict(kw, noise=gk.gumbel_noise(9, 37, 5, device=device)))
    assert out.codes[bad_rows].tolist() == [-1, -1, -1]
    assert torch.isnan(out.quantized[bad_rows]).all()
    assert torch.isnan(out.agg_posterior).all()
    for f in ROW_FIELDS:
        assert torch.isnan(getattr(out, f)[bad_rows]).all(), f
        assert torch.isfinite(getattr(out, f)[good]).all(), f
        torch.testing.assert_close(getattr(out, f)[good], getattr(clean, f)[good], rtol=0, atol=0)
    torch.testing.assert_close(out.quantized[good], clean.quantized[good], rtol=0, atol=0)
    assert torch.equal(out.codes[good], clean.codes[good])


@pytest.mark.parametrize("impl", ["torch", "triton", "triton-split"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_soft_gradients_of_non_finite_rows_match_the_reference(impl, dtype, device, monkeypatch):
    """Soft, with a q̄ gradient (in bf16 the dx kernel takes Δq, backward.defer_delta_q; fp32 keeps the Δ
    pass): a NaN row gives NaN gradients exactly where the reference's do, the other rows of dx stay
    finite. On a GPU a default min skips NaN (testing.interpreter_min_max_ignore_nan): the backward's
    probabilities of a NaN row came out as 1 there instead of NaN. (Hard mode: the NaN row's hard
    sample is an arbitrary code, whose dμ the impls leave finite in other places than the reference,
    README "NaN policy".)"""
    impl = impl_of(impl, monkeypatch)
    x, m, lv, lp = make_inputs(9, 37, 6, prior=True, dtype=dtype, device=device)
    x[1, 2] = float("nan")
    grads = {}
    for name in ("reference", impl):
        leaves = [t.clone().requires_grad_() for t in (x, m, lv, lp)]
        out = gk.gmvq(*leaves, impl=name, seed=5, tau=0.7)
        g = torch.Generator().manual_seed(0)
        (out.quantized.float().sum() + (out.agg_posterior * torch.randn(37, generator=g).to(device)).sum()).backward()
        grads[name] = [t.grad for t in leaves]
    for ref, got in zip(grads["reference"], grads[impl]):
        assert torch.equal(torch.isnan(ref).cpu(), torch.isnan(got).cpu())
    assert torch.isfinite(grads[impl][0][[0, 2, 3, 4, 5, 6, 7, 8]]).all()


def test_module_encode_decode_nan_rows():
    vq = gk.GaussianMixtureVQ(4, 16, seed=0, impl="reference").eval()
    x = torch.randn(3, 4)
    x[1, 0] = float("nan")
    codes = vq.encode(x)
    assert codes[1] == -1 and (codes[[0, 2]] >= 0).all()
    z = vq.decode(codes)
    assert torch.isnan(z[1]).all() and torch.isfinite(z[[0, 2]]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_reference_computes_in_fp32(dtype):
    """fp16 with ||x||² > 65504 and large |log_var| no longer overflow; bf16 statistics match float64 of
    the same rounded inputs to fp32 accuracy (they were 4–9 % off when computed in bf16)."""
    x, m, lv, _ = make_inputs(16, 24, 16, dtype=dtype, scale=70.0)
    lv = lv + (12.0 if dtype == torch.float16 else 0.0)
    out = gk.gmvq(x, m, lv, impl="reference", seed=3, tau=0.5)
    gt = gk.gmvq(x.double(), m.double(), lv.double(), impl="reference", noise=gk.gumbel_noise(16, 24, 3).double(),
                 tau=0.5)
    assert out.quantized.dtype == dtype
    for f in ROW_FIELDS + ("agg_posterior",):
        o, g = getattr(out, f), getattr(gt, f)
        assert o.dtype == torch.float32, f
        assert torch.isfinite(o).all(), f
        assert ((o.double() - g).abs().max() / g.abs().max()) < 1e-5, f
    assert torch.equal(out.codes, gt.codes)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("tau", [-1.0, 0.0, float("nan")])
def test_tau_checked_under_torch_compile(impl, tau):
    x, m, lv, _ = make_inputs(5, 8, 3)
    f = torch.compile(lambda x, m, lv, t: gk.gmvq(x, m, lv, tau=t, impl=impl).quantized, fullgraph=True,
                      backend="aot_eager")
    f(x, m, lv, 0.5)
    with pytest.raises(ValueError, match="tau must be a finite number in"):
        f(x, m, lv, tau)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_explicit_noise_is_rejected(bad):
    x, m, lv, _ = make_inputs(4, 5, 3)
    noise = torch.zeros(4, 5)
    noise[2, 3] = bad
    with pytest.raises(ValueError, match="noise must be finite"):
        gk.gmvq(x, m, lv, noise=noise, impl="reference")


def test_cuda_finiteness_checks_are_opt_in(monkeypatch):
    """On CUDA the data-dependent checks (a host sync each) run only with GMVQ_CHECK_FINITE=1."""
    from gmvq_kernels import checks

    monkeypatch.delenv("GMVQ_CHECK_FINITE", raising=False)
    assert not checks.check_finite_on_cuda()
    monkeypatch.setenv("GMVQ_CHECK_FINITE", "1")
    assert checks.check_finite_on_cuda()
    assert OUT_FIELDS == gk.GMVQOutput._fields


@pytest.mark.parametrize("impl", ["reference", "torch", "triton", "triton-split"])
def test_finite_at_the_corners_of_the_supported_ranges(impl, device, monkeypatch):
    """|λ| ≤ 30, τ in [1e-4, 1e4], ‖x‖, ‖μ‖ from 1e-6 to 1e6 (README, "Modes, precisions, limits"): every
    output and every gradient is finite, soft and hard."""
    import itertools

    from utils import run

    impl = impl_of(impl, monkeypatch)

    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    for lv, tau, scale, hard in itertools.product([-30.0, 30.0], [1e-4, 1e4], [1e-6, 1e6], [False, True]):
        x, m, lv0, lp = make_inputs(7, 40, 5, prior=True, device=device)  # 40 codes: 3 splits with triton-split
        lvt = (lv0 * 0.1 + lv).clamp(-30, 30)
        out, grads, _ = run([x * scale, m * scale, lvt, lp], impl, tau=tau, hard=hard, seed=1)
        case = dict(log_var=lv, tau=tau, scale=scale, hard=hard)
        for name, o in zip(OUT_FIELDS, out):
            assert torch.isfinite(o.float()).all(), (name, case)
        for name, g in zip(("dx", "dmeans", "dlog_var", "dlog_prior"), grads):
            assert torch.isfinite(g).all(), (name, case)


@pytest.mark.parametrize("impl", ["reference", "torch", "triton"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_albo_gradients_with_a_code_out_of_reach(impl, hard, device):
    """A code that no row reaches in fp32 (a dead or distant code: its ℓ ≥ ~104 below every row's best,
    so q̄_k is exactly 0) leaves the gradients of the ALBO finite and within the three-way rule of the
    float64 ones, where q̄_k > 0. Before ``losses.xlogx`` the KL took torch.xlogy(q̄, q̄), whose
    gradient at 0 is −inf, the op's backward multiplied it by q = 0, and every gradient came out NaN (a
    finite loss: the default module trained into NaN weights once a code drifted away)."""
    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    x, m, lv, lp = make_inputs(24, 8, 4, prior=True, device=device, log_var_scale=0.0)
    m[5] += 4.0  # ~300 nats from the rows at σ² = 0.1: below fp32's range, inside float64's
    lv = lv + torch.log(torch.tensor(0.1))

    def grads(impl, dtype):
        leaves = [t.detach().clone().to(dtype).requires_grad_() for t in (x, m, lv, lp)]
        out = gk.gmvq(*leaves, impl=impl, tau=0.5, hard=hard, seed=3)
        loss = gk.albo_loss(out, leaves[3], log_var=leaves[2]) + out.quantized.square().mean()
        loss.backward()
        return out.agg_posterior[5].item(), [t.grad for t in leaves]

    q64, gt = grads("reference", torch.float64)
    _, ref = grads("reference", torch.float32)
    q32, got = grads(impl, torch.float32)
    assert q32 == 0.0 < q64  # the premise: out of fp32's reach, not float64's
    for name, o, r, g in zip(("dx", "dmeans", "dlog_var", "dlog_prior"), got, ref, gt):
        assert_three_way(name, o, [r], g, REL_TOL[torch.float32])


def test_meta_tensors_give_shapes_on_the_reference_path():
    """Meta tensors (shape inference) run the reference without reading values."""
    x, m, lv = (torch.empty(*s, device="meta") for s in ((5, 3), (4, 3), (4,)))
    out = gk.gmvq(x, m, lv, impl="reference")
    assert [tuple(o.shape) for o in out] == [(5, 3), (5,), (5,), (4,), (5,), (5,), (5,)]
    assert all(o.device.type == "meta" for o in out)
