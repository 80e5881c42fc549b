"""impl="torch" (eager.py): the fused op in plain torch ops with the hand-derived backward, against the
reference: in float64 to 1e-10 (formulas), in fp32 and half by the kernels' three-way rule (rounding),
and the properties the row blocks must keep."""
import pytest
import torch

import gmvq_kernels as gk
from gmvq_kernels import cbuild, config, cpu_rows, noise
from gmvq_kernels.functional import gmvq_with_sample, resolve_impl
from gmvq_kernels.spec import DIFF_OUTPUTS

from utils import check_case, make_inputs, run

SUBSETS = {"all": None, **{name: {name} for name in DIFF_OUTPUTS}}


@pytest.fixture(autouse=True, params=["c", "torch"])
def rows(request, monkeypatch):
    """Every test twice: impl="torch"'s per-element work in C (cpu_rows.py, built where a compiler is)
    and in torch ops."""
    monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "1" if request.param == "c" else "0")
    if request.param == "c" and cpu_rows.rows_library() is None:
        pytest.skip("no C compiler: the C row passes cannot be built here (test_c_rows_build_where_a_compiler_is)")
    return request.param


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of 4 rows, so that a small batch spans several (N = 11: 4, 4, 3); returns the list
    the row counts of the blocks run are appended to."""
    from gmvq_kernels import eager

    monkeypatch.setattr(config, "EAGER_MIN_ROWS", 4)
    monkeypatch.setattr(config, "REFERENCE_BLOCK_ELEMS", 1)
    monkeypatch.setattr(config, "EAGER_C_BLOCK_ELEMS", 1)
    rows, block = [], eager._forward_block
    monkeypatch.setattr(eager, "_forward_block", lambda x, *a: rows.append(x.shape[0]) or block(x, *a))
    return rows


@pytest.mark.parametrize("subset", list(SUBSETS.values()), ids=list(SUBSETS))
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("prior,tau", [(False, 1.0), (True, 0.6)], ids=["uniform-tau1", "prior-tau0.6"])
def test_float64_matches_autograd_of_the_reference(small_blocks, subset, hard, prior, tau):
    """Every output, the sample codes and every gradient, with every upstream gradient alone and all
    together (an absent one skips its terms): the formulas, to float64 rounding. Rows 3 and 6 sit on a
    mean (the clamp at 0 is active at (3, 2), rounded d = −9e-16, and changes no gradient there as x = μ;
    the NaN rows of test_reliability.py are what the clamp's mask changes)."""
    N, K, D = 11, 7, 5
    inputs = [None if t is None else t.double() for t in make_inputs(N, K, D, prior=prior)]
    inputs[0][3], inputs[0][6] = inputs[1][2], inputs[1][5]
    results = {}
    for impl in ("reference", "torch"):
        leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
        out, sample = gmvq_with_sample(*leaves, tau=tau, hard=hard, seed=5, impl=impl)
        g = torch.Generator().manual_seed(0)
        loss = sum((getattr(out, name) * torch.randn(getattr(out, name).shape, generator=g, dtype=torch.float64)).sum()
                   for name in DIFF_OUTPUTS if subset is None or name in subset)
        loss.backward()
        results[impl] = out, sample, [t.grad for t in leaves if t is not None]
    assert small_blocks == [4, 4, 3]
    (want, want_sample, want_grads), (got, got_sample, got_grads) = results["reference"], results["torch"]
    for name, w, o in zip(want._fields, want, got):
        assert o.dtype == w.dtype, name
        torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12, msg=name)
    assert (got_sample is None) == (not hard) and (not hard or torch.equal(got_sample, want_sample))
    for name, w, o in zip(("dx", "dmeans", "dlog_var", "dlog_prior"), want_grads, got_grads):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10, msg=name)


CASES = {"defaults": dict(), "hard-prior": dict(hard=True, prior=True, tau=0.5),
         "noise-tau-far": dict(explicit_noise=True, tau=0.2, prior=True, scale=10.0)}


@pytest.mark.parametrize("opts", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("shape", [(40, 200, 20), (13, 37, 11), (23, 1, 5), (1, 29, 8)],
                         ids=lambda s: "N{}-K{}-D{}".format(*s))
def test_fp32_matches_reference(small_blocks, shape, opts, device):
    check_case(*shape, device, impl="torch", **opts)


# found by tests/random_sweep.py (--impl torch, seed 11): a peaked sample (small τ, latents far apart)
# where Y − Δy cancels. impl="torch" failed each at 1.1–2.8× the bound before it shifted Y by its value
# at each row's likeliest code (eager._backward_block), the reference passing
PEAKED = {
    "N1-K548-D21": (1, 548, 21, dict(tau=0.18573632092667583, seed=1095485088500444794, scale=9.160186349681148,
                                     log_var_scale=1.0)),
    "N2-K2-D3-var": (2, 2, 3, dict(tau=0.25533312534809366, seed=6299649715663847222, scale=7.720904434440275,
                                   upstream_only={"mixture_var"})),
    "N1-K2-D3-prior": (1, 2, 3, dict(tau=0.2045146471838816, seed=7239654576117571041, scale=3.709312156561509,
                                     prior=True, offset=1.0)),
    "N1-K2-D3-hard": (1, 2, 3, dict(tau=0.12224550030009457, seed=1902910100679512014, scale=1.820231421673576,
                                    prior=True, hard=True)),
}


@pytest.mark.parametrize("case", list(PEAKED.values()), ids=list(PEAKED))
def test_fp32_peaked_sample(case, device):
    N, K, D, opts = case
    check_case(N, K, D, device, impl="torch", **opts)


# found by tests/random_sweep.py (--impl torch, seeds 11 and 13): latents one unit off the origin and
# spread by ~0.15 (or a gradient of Ḡ_z·μ_k across codes at an offset). dx and dμ are differences of
# products, each carrying the offset, and failed at 1.3–1.5× the bound before the backward took x and μ
# relative to the codebook's mean (eager.py, _EagerGMVQ.backward), the reference passing
OFFSET = {
    "N1-K680-D1": (1, 680, 1, dict(tau=8.293894383719019, seed=2841205233610863694, scale=0.13415551162807235,
                                   log_var_scale=1.0, prior=True, offset=1.0)),
    "N3-K2-D3-hard": (3, 2, 3, dict(tau=1.083712398697466, seed=6545048927146982587, scale=2.0255382578232783,
                                    prior=True, hard=True, offset=1.0)),
}


@pytest.mark.parametrize("case", list(OFFSET.values()), ids=list(OFFSET))
def test_fp32_common_offset(case, device):
    N, K, D, opts = case
    check_case(N, K, D, device, impl="torch", **opts)


# found by tests/random_sweep.py (--impl torch, seeds 11 and 15): a peaked q, where Ḡ_q̄ − Δq cancels (at
# K = 1 it is exactly 0). impl="torch" failed each at 1.5–2.4× the bound before it shifted Ḡ_q̄ by its
# value at each row's likeliest code (eager._backward_block), the reference passing
PEAKED_Q = {
    "N1-K2-D19-fp16": (1, 2, 19, dict(dtype=torch.float16, tau=0.18597706245841283, explicit_noise=True,
                                      seed=9118781285171676811, scale=0.10820099142967102, offset=1.0,
                                      upstream_only={"agg_posterior"})),
    "N1-K2-D28-hard": (1, 2, 28, dict(hard=True, prior=True, tau=0.45929278599935736, explicit_noise=True,
                                      seed=3510527707253937879, scale=2.026777854977299,
                                      upstream_only={"agg_posterior", "mixture_var", "quantized"})),
    "N3-K1-D13": (3, 1, 13, dict(tau=1.3827989299802406, seed=3866252991050025112, scale=2.3473057912526176)),
    "N1-K1-D1-hard": (1, 1, 1, dict(hard=True, tau=6.214138417149595, seed=1719039391392217000,
                                    scale=1.7951614575654307)),
}


@pytest.mark.parametrize("case", list(PEAKED_Q.values()), ids=list(PEAKED_Q))
def test_peaked_posterior(case, device):
    N, K, D, opts = case
    check_case(N, K, D, device, impl="torch", **opts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_half_matches_reference(small_blocks, dtype, hard, device):
    """Half inputs are computed in fp32 from their rounded values (as the reference); quantized and dx
    come back in the input dtype."""
    check_case(13, 37, 11, device, impl="torch", dtype=dtype, hard=hard, prior=True, tau=0.5)


def test_seeded_noise_is_gumbel_noise_and_steps_are_reproducible(small_blocks):
    """With a seed it draws ``gumbel_noise(N, K, seed)``: the same outputs as that noise passed
    explicitly, and the same bits on a second run (blocks included)."""
    inputs = make_inputs(11, 9, 4, prior=True)
    seeded, grads, up = run(inputs, "torch", tau=0.5, hard=True, seed=2**63 + 5)
    again, grads2, _ = run(inputs, "torch", tau=0.5, hard=True, seed=2**63 + 5, upstream=up)
    explicit, _, _ = run(inputs, "torch", tau=0.5, hard=True, noise=gk.gumbel_noise(11, 9, 2**63 + 5), upstream=up)
    for name, a, b, c in zip(seeded._fields, seeded, again, explicit):
        assert torch.equal(a, b) and torch.equal(a, c), name
    for a, b in zip(grads, grads2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("how", ["no_grad", "no_leaf"])
def test_without_a_backward_nothing_is_kept(monkeypatch, small_blocks, hard, how, rows):
    """Under no_grad, or with no input that needs a gradient, the blocks keep nothing for a backward
    (memory: one block's temporaries, not N×K) and, in torch ops, skip the sample's argmax in soft mode,
    with the same outputs, bit for bit, as a call that could be differentiated."""
    from gmvq_kernels import eager

    kept, argmaxes, argmax = [], [], eager._row_argmax
    monkeypatch.setattr(eager, "_row_argmax", lambda t: argmaxes.append(t.shape) or argmax(t))
    block = eager._forward_block

    def keeping(*args):
        result = block(*args)
        kept.append(result[2])
        return result

    monkeypatch.setattr(eager, "_forward_block", keeping)
    inputs = make_inputs(11, 9, 4, prior=True)
    want = gk.gmvq(*[t.clone().requires_grad_() for t in inputs], tau=0.5, hard=hard, seed=3, impl="torch")
    assert all(s is not None for s in kept) and len(argmaxes) == (2 * len(kept) if rows == "torch" else 0)
    kept.clear()
    argmaxes.clear()
    if how == "no_grad":
        with torch.no_grad():
            got = gk.gmvq(*[t.clone().requires_grad_() for t in inputs], tau=0.5, hard=hard, seed=3, impl="torch")
    else:
        got = gk.gmvq(*inputs, tau=0.5, hard=hard, seed=3, impl="torch")
    assert len(kept) == 3 and all(s is None for s in kept)
    assert len(argmaxes) == ((2 if hard else 1) * len(kept) if rows == "torch" else 0)
    for name, w, o in zip(want._fields, want, got):
        assert torch.equal(o, w.detach()), name


@pytest.mark.skipif(cbuild.c_compiler() is None, reason="no C compiler on PATH")
def test_c_rows_build_where_a_compiler_is(monkeypatch):
    """With a C compiler on PATH impl="torch" takes the C row passes (no silent fallback to torch ops),
    and ``GMVQ_C_ROWS=0`` turns them off."""
    monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "1")
    assert cpu_rows.rows_library() is not None
    monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "0")
    assert cpu_rows.rows_library() is None


def test_c_rows_that_cannot_build_warn_and_run_in_torch_ops(monkeypatch):
    """A compiler that fails: one warning naming the cause and the way out, then the torch ops (the
    values of ``GMVQ_C_ROWS=0``, bit for bit)."""
    inputs = make_inputs(11, 9, 4, prior=True)
    monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "0")
    want = gk.gmvq(*inputs, tau=0.5, seed=3, impl="torch")
    monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(cbuild, "_LOADED", {k: v for k, v in cbuild._LOADED.items() if k != "gmvq_rows"})
    with pytest.warns(RuntimeWarning, match=r"row passes could not be built.*/nonexistent/cc.*GMVQ_C_ROWS=0"):
        got = gk.gmvq(*inputs, tau=0.5, seed=3, impl="torch")
    for name, w, o in zip(want._fields, want, got):
        assert torch.equal(o, w), name


def _rows_args(N, K, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, means = torch.randn(N, 6, generator=g, dtype=dtype), torch.randn(K, 6, generator=g, dtype=dtype)
    a, b = torch.rand(K, generator=g, dtype=dtype) + 0.1, torch.randn(K, generator=g, dtype=dtype)
    return x, means, a, b, torch.randn(N, K, generator=g, dtype=dtype)


@pytest.mark.parametrize("drawn", [False, True], ids=["noise-given", "noise-drawn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_c_rows_are_the_same_on_any_number_of_threads(dtype, drawn, rows):
    """The C row passes split the rows over OpenMP's threads in fixed chunks and add the column sums
    chunk by chunk in order, each thread with its own row buffers: one thread and two give the same
    bits (forward, with the noise given or drawn in the pass, and backward)."""
    if rows != "c":
        pytest.skip("the C row passes alone")
    lib = cpu_rows.rows_library()
    x, means, a, b, noise = _rows_args(150, 40, dtype)  # 150 rows: five chunks, the last one short
    gq, glat = torch.randn(40, dtype=dtype), torch.randn(150, dtype=dtype)
    results, threads = [], torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            da = x @ means.T
            fwd = cpu_rows.forward(lib, da, (x * x).sum(1), (means * means).sum(1), a, b, None if drawn else noise,
                                   0.7, False, seed=9, row_offset=3)
            y, codes, top, m, q_inv = fwd[:5]
            bwd = cpu_rows.backward(lib, torch.randn(150, 40, generator=torch.Generator().manual_seed(1), dtype=dtype),
                                    True, da, q_inv, y, a, a, b, None, glat, glat, None, None, gq, top, codes[:, None],
                                    None, m, fwd[7])
            results.append([da, *fwd, *bwd])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("K,row_offset", [(39, 0), (1030, 2 ** 32 - 2)], ids=["K39", "K1030-offset2^32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_c_rows_draw_gumbel_noise_bit_for_bit(dtype, K, row_offset, rows):
    """Given no noise, the C forward draws each row's as it reaches the row: gumbel_noise's C twin's
    bits (K not a multiple of 4; several tiles of Philox calls; rows whose index crosses 2³²), so every
    output is the one given that noise, bit for bit, and another seed gives another sample."""
    if rows != "c" or noise.c_philox() is None:
        pytest.skip("the C row passes and the C twin")
    lib = cpu_rows.rows_library()
    x, means, a, b, _ = _rows_args(70, K, dtype)
    x_sq, mm = (x * x).sum(1), (means * means).sum(1)
    given = noise.gumbel_noise_numpy(70, K, 2 ** 63 + 5, row_offset).to(dtype)
    want = [x @ means.T]
    want += cpu_rows.forward(lib, want[0], x_sq, mm, a, b, given, 0.7, False)
    for seed, same in ((2 ** 63 + 5, True), (2 ** 63 + 6, False)):
        got = [x @ means.T]
        got += cpu_rows.forward(lib, got[0], x_sq, mm, a, b, None, 0.7, False, seed=seed, row_offset=row_offset)
        assert all(torch.equal(w, o) for w, o in zip(want, got)) == same


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_noise_drawn_in_the_c_pass_is_gumbel_noise(monkeypatch, small_blocks, hard, rows):
    """Where gumbel_noise draws with the C twin (a CPU without the interpreter: here forced), impl="torch"
    leaves the noise to the C forward pass, row block by row block (no gumbel_noise call): outputs and
    every gradient are those with gumbel_noise's tensor given, bit for bit."""
    from gmvq_kernels import eager

    if rows != "c" or noise.c_philox() is None:
        pytest.skip("the C row passes and the C twin")
    inputs = make_inputs(11, 9, 4, prior=True)
    results = []
    for drawn in (False, True):
        monkeypatch.setattr(eager, "c_twin_draws", lambda device: drawn)
        if drawn:
            monkeypatch.setattr(eager, "gumbel_noise", None)  # not called
        leaves = [t.clone().requires_grad_() for t in inputs]
        given = None if drawn else noise.gumbel_noise_numpy(11, 9, 3)
        out = gk.gmvq(*leaves, tau=0.5, hard=hard, seed=3, noise=given, impl="torch")
        (out.quantized.square().sum() + out.latent_nll.sum() + out.agg_posterior.square().sum()
         + out.entropy.sum()).backward()
        results.append([*out, *(t.grad for t in leaves)])
    assert small_blocks == [4, 4, 3] * 2
    for want, got in zip(*results):
        assert torch.equal(want, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_c_backward_forms_the_forwards_q_bit_for_bit(dtype, rows):
    """The C forward keeps 1 / Σ_k exp(ℓ − m), not q; the backward forms q from it with the forward's
    operations. With Ḡ_lse = 1 alone, dℓ = q, so the backward's Σ_rows dℓ is its q summed as the
    forward sums q into q̄ (chunk by chunk, in order): the same bits, at 150 rows (five chunks)."""
    if rows != "c":
        pytest.skip("the C row passes alone")
    lib = cpu_rows.rows_library()
    x, means, a, b, noise = _rows_args(150, 40, dtype)
    da = x @ means.T
    y, codes, top, m, q_inv, _, _, q_ell, _, q_sum = cpu_rows.forward(lib, da, (x * x).sum(1), (means * means).sum(1),
                                                                     a, b, noise, 0.7, False)
    e = torch.empty_like(da)
    _, db, _, _ = cpu_rows.backward(lib, e, False, da, q_inv, y, a, a, b, None, None, None, torch.ones(150, dtype=dtype),
                                    None, None, top, codes[:, None], None, m[:, None], q_ell)
    assert torch.equal(db, q_sum)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_c_rows_treat_non_finite_rows_as_the_torch_ops(hard, rows):
    """Rows whose logits are NaN, −inf, or a mix of both (an infinite latent against means with a zero
    component): the C forward's outputs, argmaxes included (NaN counts as the largest, the first one
    wins, as torch's), have the torch ops' NaN pattern and values, and so does the backward's e."""
    if rows != "c":
        pytest.skip("the C row passes alone")
    from gmvq_kernels import eager

    x, means, a, b, noise = _rows_args(5, 9)
    means[[2, 6], 1], means[0, 1] = 0.0, -1.0  # the mixed row: −inf at code 0, its first NaN at 2 or after
    x[1, 1], x[2, 0], x[3] = float("inf"), float("nan"), 3e19  # mixed NaN/−inf, all NaN, all −inf
    x_sq, mm = (x * x).sum(1), (means * means).sum(1)
    lib = cpu_rows.rows_library()
    want = eager._rows_torch(x, x_sq, means, a, b, mm, noise, 0.7, hard, True)
    da = x @ means.T
    y, codes, top, m, q_inv, *rest = cpu_rows.forward(lib, da, x_sq, mm, a, b, noise, 0.7, hard)
    q = torch.exp((b - da) - m[:, None]) * q_inv[:, None]  # as the C backward forms it
    got = (da, q, y, codes, top, m, *rest)
    assert not torch.isnan(want[0][1, 0]) and torch.isnan(want[0][1]).any() and want[4][1] > 0  # mixed
    for name, w, o in zip(["da", "q", "y", "codes", "top", "m", "lse", "entropy", "q_ell", "latent_nll", "q_sum"],
                          want, got):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)
    g = torch.randn(5, 9, generator=torch.Generator().manual_seed(2))
    grads = {name: None for name in eager.DIFF_OUTPUTS}
    grads.update(latent_nll=torch.ones(5), agg_posterior=torch.ones(9))
    top, codes, sample = want[4], want[3], want[4] if hard else None
    e_want = eager._e_torch(want[0], want[1], want[2], sample, want[11], want[5][:, None], want[8], codes[:, None],
                            top, g.clone(), grads, 0.7, 5, a, b, a)[0]
    e_got = g.clone()
    cpu_rows.backward(lib, e_got, True, da, q_inv, y, a, a, b, None, torch.ones(5) / 0.7, torch.ones(5),
                      None, None, torch.ones(9) / 5, top, codes[:, None], sample, m[:, None], got[8])
    torch.testing.assert_close(e_got, e_want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_c_rows_softmax_is_accurate_into_the_subnormals(order, rows):
    """The fp32 C forward's own exp (a polynomial, cpu_rows._EXP_F32): q (from q̄'s column sums of two
    equal rows) and y of logits spread over [−110, 0] (past fp32's normal range at −87.3) against
    float64's softmax: within 8 ulps where normal (measured 3–5, the row sum's rounding included;
    torch's fp32 softmax 2.7 here) and within two subnormal steps below it (exp, then the product with
    1/Σ, round there: measured 1.9), 0 past −104."""
    if rows != "c":
        pytest.skip("the C row passes alone")
    K = 4096
    d = torch.linspace(0.0, 110.0, K, dtype=torch.float64)
    if order == "shuffled":
        d = d[torch.randperm(K, generator=torch.Generator().manual_seed(0))]
    ones, zeros = torch.ones(K), torch.zeros(K)
    G = (-d / 2).float()[None, :].repeat(2, 1)  # d = (0 − 2G) + 0 exactly, a = 1, b = 0: ℓ = −d
    want = torch.softmax(2 * G.double(), 1)
    fwd = cpu_rows.forward(cpu_rows.rows_library(), G, torch.zeros(2), zeros, ones, zeros, torch.zeros(2, K), 1.0,
                           False)
    for got in ((fwd[-1] / 2).expand(2, K), fwd[0]):  # q (the sum of two equal rows, halved exactly), y
        normal = want >= 2.0 ** -126
        assert ((got.double() - want).abs() / want)[normal].max() <= 8 * 2.0 ** -24
        assert (got.double() - want).abs()[~normal].max() <= 2 * 2.0 ** -149
        assert (got[~normal] > 0).any() and (got == 0).any()  # both subnormals and zeros were tested


def test_c_row_passes_refuse_a_buffer_they_cannot_write(rows):
    """The C passes write G, y and e in place through raw pointers: a half, or non-contiguous, buffer
    raises a TypeError naming it instead of being written past (``_call`` would have passed a copy, or the
    fp64 pass a half buffer: a backward inside an autocast region once did, test_module.py)."""
    if rows != "c":
        pytest.skip("the C row passes alone")
    lib, K = cpu_rows.rows_library(), 4
    ones, zeros = torch.ones(K), torch.zeros(K)

    def fwd(G, **kw):
        return cpu_rows.forward(lib, G, torch.zeros(2), zeros, ones, zeros, torch.zeros(2, K), 1.0, False, **kw)

    fwd(torch.zeros(2, K))  # the buffers it takes
    with pytest.raises(TypeError, match=r"write G in place: it must be a contiguous float32 or float64 tensor; "
                                        r"got torch.bfloat16, contiguous=True"):
        fwd(torch.zeros(2, K, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"write G in place.*got torch.float32, contiguous=False"):
        fwd(torch.zeros(K, 2).T)
    with pytest.raises(TypeError, match=r"write y in place: it must be a contiguous torch.float32 tensor; "
                                        r"got torch.float64"):
        fwd(torch.zeros(2, K), y=torch.zeros(2, K, dtype=torch.float64))
    e = torch.zeros(2, K, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"write e in place.*got torch.bfloat16"):
        cpu_rows.backward(lib, e, True, *(None,) * 17)


def test_no_double_backward():
    x, m, lv, _ = make_inputs(5, 3, 2, requires_grad=True)
    out = gk.gmvq(x, m, lv, impl="torch")
    (gx,) = torch.autograd.grad(out.quantized.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_auto_takes_torch_on_a_cpu_and_under_compile_its_c_passes_or_the_reference(monkeypatch, rows):
    import gmvq_kernels.functional as functional

    x = torch.zeros(2, 3)
    monkeypatch.setattr(functional, "can_use_triton", lambda device: False)  # a CPU without the interpreter
    assert resolve_impl("auto", x) == "torch"
    assert resolve_impl("auto", x.double()) == "torch"
    assert resolve_impl("auto", torch.zeros(2, 3, device="meta")) == "reference"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    under_compile = "torch" if rows == "c" else "reference"  # the custom ops of the C passes, where built
    assert resolve_impl("auto", x) == under_compile and resolve_impl("torch", x) == under_compile


def test_torch_compile_traces_it(rows):
    """impl="torch" under torch.compile(fullgraph=True) traces without a graph break (the C passes as
    custom ops, else the reference) and gives the eager values (bit for bit with the C passes: the same
    code, gradients included)."""
    torch._dynamo.reset()  # the choice is made as a graph is traced: not the other parameter's graph
    inputs = make_inputs(9, 6, 3)[:3]
    f = lambda x, m, lv: gk.gmvq(x, m, lv, impl="torch", seed=4, tau=0.7)  # noqa: E731
    results = []
    for fn in (torch.compile(f, fullgraph=True, backend="eager"), f):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        (out.quantized.square().sum() + out.agg_posterior.square().sum() + out.entropy.sum()).backward()
        results.append([*out, *(t.grad for t in leaves)])
    for a, b in zip(*results):
        if rows == "c":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
