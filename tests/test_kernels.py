"""The Triton path against the reference (three-way comparison, tests/utils.py); on CPU through TRITON_INTERPRET=1."""
import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import gmvq_kernels as gk
from gmvq_kernels import tiles
from gmvq_kernels.noise import _uniform_to_gumbel, gumbel_tile, philox_words_numpy, split_seed, words_to_gumbel

from test_eager import PEAKED_Q
from utils import OUT_FIELDS, check_case, make_inputs, run

SHAPES = [(64, 64, 16), (13, 37, 11), (40, 200, 20), (1, 29, 8), (23, 1, 5), (17, 40, 1)]
OPTIONS = {
    "defaults": dict(),  # τ = 1: y from q in the backward (tiles.tau_one)
    "hard-prior-tau1": dict(hard=True, prior=True),
    "hard-prior": dict(hard=True, prior=True, tau=0.5),
    "noise-tau": dict(explicit_noise=True, tau=0.2, prior=True),
}


def shape_id(s):
    return "N{}-K{}-D{}".format(*s)


@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_fp32_matches_reference(shape, opts, device):
    opts = dict(opts)
    check_case(*shape, device, **opts)


@pytest.mark.parametrize("opts", [OPTIONS["defaults"], OPTIONS["hard-prior-tau1"], OPTIONS["hard-prior"]],
                         ids=["defaults", "hard-prior-tau1", "hard-prior"])
@pytest.mark.parametrize("shape", [(13, 37, 11), (40, 200, 20), (1, 29, 8)], ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_matches_reference(shape, opts, dtype, device):
    check_case(*shape, device, dtype=dtype, **opts)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("upstream_only", [{"quantized"}, None], ids=["only-quantized", "all"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_delta_from_forward_clustered(dtype, upstream_only, hard, device):
    """Half inputs take Δy = Ḡ_z·Σ y μ + … from the forward (forward.delta_from_forward). With the data
    clustered far from the origin (|μ| / spread = 30) an error ε·|μ| in Σ y μ is 30·ε of Y − Δy, so the
    sum must be fp32-accurate: p_y rounded to half alone (ε = 2⁻⁹) fails this case in dx, soft and
    hard; the split p_hi + p_lo passes. The interpreter sees that rounding because the kernel rounds
    to x's dtype by name (OP_DTYPE), not to its fp32 interpreter operands."""
    check_case(13, 37, 8, device, dtype=dtype, offset=30.0, upstream_only=upstream_only, hard=hard)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_trained_quantizer_inputs(dtype, hard, device):
    """A trained quantizer's inputs (testing.make_inputs' near_codes: each row 0.03 spreads from its code,
    σ² to match, so q and the sample are peaked). fp32 with the interpreter's dots made orientation-free
    (testing.interpreter_exact_fp32_dots, as a GPU's ieee FMA chain is): with NumPy's own, the passes
    round each distance differently in its last bits, 1/(2σ²τ) turns that into different probabilities,
    and q̄ fails by ~10² × the bound, dμ's error ~10² × the reference's (README, "Correctness")."""
    from contextlib import nullcontext

    from gmvq_kernels.testing import interpreter_exact_fp32_dots

    exact = dtype == torch.float32 and gk.config.INTERPRET
    with interpreter_exact_fp32_dots() if exact else nullcontext():
        check_case(24, 37, 8, device, dtype=dtype, hard=hard, prior=True, tau=0.5, near_codes=0.03)


@pytest.mark.skipif(not gk.config.INTERPRET, reason="the interpreter's dots")
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_trained_quantizer_tf32x3_passes_agree(hard, device):
    """fp32 with tf32x3 (tiles.mma's three tf32 dots) on a trained quantizer's inputs, the interpreter's
    dots accumulated 8 products at a time as a tf32 HGMMA accumulates (interpreter_exact_fp32_dots(8)):
    every pass forms each distance from the same dots in the same order whichever way its tile lies,
    so the kernels pass as with ieee. With the column kernels' cross products in the other order
    (μ_lo·x_hi first, Triton's own tf32x3 order there) q̄ failed by 15× the bound (2026-12-05), the
    class of the H200's fp32 tf32x3 failure on these inputs (README, "Correctness")."""
    from gmvq_kernels.testing import interpreter_exact_fp32_dots

    with interpreter_exact_fp32_dots(8):
        check_case(24, 37, 8, device, dtype=torch.float32, hard=hard, prior=True, tau=0.5, near_codes=0.03,
                   dot_precision="tf32x3")


@triton.jit
def _split_tf32_kernel(t_ptr, hi_ptr, lo_ptr):
    offs = tl.arange(0, 1024)
    hi, lo = tiles.split_hi_lo(tl.load(t_ptr + offs), tl.float32)
    tl.store(hi_ptr + offs, hi)
    tl.store(lo_ptr + offs, lo)


def test_split_hi_lo_fp32_gives_exact_tf32_parts(device):
    """tiles.split_hi_lo at fp32 (mma's tf32x3): both parts exact tf32 values (low 13 bits clear), hi
    rounded to nearest (|lo| ≤ 2⁻¹¹|t|, ties away from zero as cvt.rna.tf32 does; truncated, |lo|
    reached 2⁻¹⁰|t|) and within 2⁻²¹|t| of t together, for |t| from 2⁻¹⁰⁰ to fp32's largest less half a
    tf32 ulp, both signs (below ~2⁻¹¹⁵ the rest falls among the subnormals and keeps fewer bits; values
    that small add nothing a distance can see)."""
    g = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.empty(1024).uniform_(-100, 127, generator=g))
    t = (mags * torch.randn(1024, generator=g).sign()).float()
    specials = torch.tensor([0x3F801000, 0xBF801000 - 2**32, 0x7F7FEFFF, 0x00800000], dtype=torch.int32)
    t[:4] = specials.view(torch.float32)  # ±(1 + 2⁻¹¹) (ties), the largest that rounds finite, the tiniest normal
    t[4:6] = torch.tensor([0.0, -0.0])
    t = t.to(device)
    hi, lo = torch.empty_like(t), torch.empty_like(t)
    _split_tf32_kernel[(1,)](t, hi, lo)
    for part in (hi, lo):
        assert (part.cpu().view(torch.int32) & 0x1FFF == 0).all()
    assert torch.equal(hi[:2].cpu(), torch.tensor([1 + 2.0**-10, -1 - 2.0**-10]))
    t64, hi64, lo64 = t.double(), hi.double(), lo.double()
    assert (lo64.abs() <= 2.0**-11 * t64.abs()).all(), (lo64.abs() / t64.abs()).nan_to_num().max()
    err = (t64 - hi64 - lo64).abs()
    assert (err <= 2.0**-21 * t64.abs()).all(), (err / t64.abs()).nan_to_num().max()
    assert torch.isfinite(hi).all() and torch.isfinite(lo).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf − inf
@pytest.mark.parametrize("scale, parts_first", [(1.0, False), (1.0, True), (-0.5, True)],
                         ids=["codes-rowkernels", "rows-rowkernels", "rows-colkernels"])
def test_norm_parts_are_exact(scale, parts_first, device):
    """The norm operands (tiles.norm_parts): scale·sq as three parts, each exact in bf16, summing to
    scale·sq exactly, beside three ones (the rows' parts in columns 0–2, the codes' in 3–5), zeros
    elsewhere: the norm dot then adds exactly scale·(||x||² + ||μ||²), up to the tensor cores' own
    summation. Over fp32's exponent range: where the parts are subnormal in bf16 (|scale·sq| < 2⁻¹⁰⁹)
    within 2⁻¹³¹ absolute; a non-finite norm gives non-finite parts."""
    from gmvq_kernels.tiles import norm_operand

    g = torch.Generator().manual_seed(0)
    sq = torch.cat([torch.rand(200, generator=g) * 2.0 ** torch.randint(-140, 127, (200,), generator=g).float(),
                    torch.tensor([0.0, 1.0, 3.0, 1e-45, 1e-40, 1.2e-38, 1.7e38, 3.4e38])]).float()
    sq = sq[(sq * scale).isfinite()]
    out = norm_operand(sq.to(device), scale, parts_first).cpu().float()
    parts, ones = (out[:, :3], out[:, 3:6]) if parts_first else (out[:, 3:6], out[:, :3])
    want = scale * sq.double()
    normal = want.abs() >= 2.0**-109
    assert torch.equal(parts[normal].to(torch.bfloat16).float(), parts[normal]), "a part is not exact in bf16"
    assert torch.equal(parts[normal].double().sum(1), want[normal]), "the parts do not sum to scale·sq"
    # below, each part loses its bits under bf16's smallest subnormal (2⁻¹³³): an absolute error, no more
    assert (parts[~normal].double().sum(1) - want[~normal]).abs().max() < 2.0**-131
    assert torch.equal(ones, torch.ones_like(ones)) and not out[:, 6:].any()
    bad = norm_operand(torch.tensor([float("inf"), float("nan")], device=device), scale, parts_first)
    assert not bad.cpu().float()[:, :6].isfinite().all(1).any(), "a non-finite norm gave finite parts"


def ulps_apart(got, want):
    """|got − want| in units of fp32's last place at ``want`` (both fp32 tensors)."""
    ulp = torch.finfo(torch.float32).eps * torch.maximum(want.abs(), torch.tensor(torch.finfo(torch.float32).tiny))
    return ((got.double() - want.double()).abs() / ulp.double()).max().item()


@pytest.mark.parametrize("dtype, D, K", [(torch.bfloat16, 100, 70), (torch.float32, 16, 5), (torch.float16, 33, 64)],
                         ids=["bf16-D100", "fp32-D16", "fp16-D33"])
def test_code_terms_match_torch(dtype, D, K, device):
    """tiles.code_terms (one launch) against the torch ops the references use:
    spec.component_terms' a, b, v within an ulp (the exps: libdevice's on a GPU, NumPy's under the
    interpreter, against torch's), ||μ||² within the rounding of its sum, and the
    codes' norm operand exactly tiles.code_norm_operand of the launch's own ||μ||² (None without the norm
    dot), over log σ² from −40 to 40 and a prior; without one (None), the uniform prior's."""
    from gmvq_kernels.spec import component_terms

    g = torch.Generator().manual_seed(1)
    means = (torch.randn(K, D, generator=g) * 3 + 5).to(dtype)
    log_var = torch.linspace(-40, 40, K)
    log_pi = torch.log_softmax(torch.randn(K, generator=g), 0)
    (a, b, v, mm), mp = tiles.code_terms(means.to(device), log_var.to(device), log_pi.to(device))
    want = dict(zip("abv", component_terms(log_var, log_pi, D)))
    got = dict(a=a, b=b, v=v, mm=mm)
    assert all(t.dtype == torch.float32 and t.shape == (K,) and t.is_contiguous() for t in got.values())
    for name in "av":
        assert ulps_apart(got[name].cpu(), want[name]) <= 1, name
    # b = log π − (D/2)(λ + log 2π): an ulp of its larger part (the last subtraction may be fused)
    scale = torch.maximum(log_pi.abs(), (0.5 * D * (log_var + math.log(2 * math.pi))).abs())
    assert ((b.cpu() - want["b"]).abs() <= torch.finfo(torch.float32).eps * scale).all()
    # ||μ||² against the exact sum: D roundings of 2⁻²⁴ at most (squares and sums, in any order)
    exact = (means.double() ** 2).sum(1)
    assert ((mm.cpu().double() - exact).abs() <= D * 2.0**-24 * exact).all()
    if tiles.norm_dot(dtype):
        assert torch.equal(mp, tiles.code_norm_operand(mm, dtype))
    else:
        assert mp is None
    # log π None: the uniform prior, as spec.log_prior_probs makes it (−log K), to the bit
    uniform = torch.full((K,), -math.log(K), device=device)
    assert torch.equal(tiles.code_terms(means.to(device), log_var.to(device), None)[0],
                       tiles.code_terms(means.to(device), log_var.to(device), uniform)[0])


@pytest.mark.parametrize("n, dtype", [(1, torch.float32), (3, torch.bfloat16), (4, torch.float32)],
                         ids=["1split-fp32", "3splits-bf16", "4splits-fp32"])
def test_finish_splits(n, dtype, device):
    """tiles.finish_splits, the one-launch epilogue of the split passes: scale·(Σ acc − base·Σ sums) in
    base's dtype, the splits added in order (fp32, as torch adds them one after another here; the last
    operation may be fused on a GPU: within an ulp before the cast), and up to two vectors' split sums
    divided by a divisor, exactly (IEEE division), each its own tensor (a custom op's outputs must not
    alias)."""
    g = torch.Generator().manual_seed(2)
    L, D = 45, 70
    acc, sums = torch.randn(n, L, D, generator=g) * 100, torch.randn(n, L, generator=g)
    base = torch.randn(L, D, generator=g).to(dtype)
    vecs = torch.randn(2, n, L, generator=g)
    in_order = lambda t: sum(t[1:], t[0])  # noqa: E731  the splits one after another
    # one split's buffers come without the split axis (tiles.split_parts)
    as_parts = lambda t: (t[0] if n == 1 else t).to(device).clone()  # noqa: E731
    acc_parts = as_parts(acc)
    out, vec_out = tiles.finish_splits(n, acc_parts, as_parts(sums), base.to(device), scale=-2.0,
                                       vecs=(as_parts(vecs[0]), as_parts(vecs[1])), divisor=7.0)
    want = -2.0 * (in_order(acc) - base.float() * in_order(sums)[:, None])
    assert out.dtype == dtype and out.shape == (L, D)
    # one split, fp32: over the scratch buffer (no second (L, D) fp32 tensor)
    assert (out.data_ptr() == acc_parts.data_ptr()) == (n == 1 and dtype == torch.float32)
    if dtype == torch.float32:
        assert ulps_apart(out.cpu(), want) <= 1
    else:  # the fp32 value within an ulp, then rounded: at most one bf16 step from rounding ``want``
        step = torch.finfo(dtype).eps * want.abs().to(dtype).float()
        assert ((out.cpu().float() - want.to(dtype).float()).abs() <= step).all()
    assert len(vec_out) == 2 and vec_out[0].data_ptr() != vec_out[1].data_ptr()
    for got, parts in zip(vec_out, vecs):
        assert got.shape == (L,) and torch.equal(got.cpu(), in_order(parts) / 7.0)
    (one,) = tiles.finish_splits(n, vecs=(as_parts(vecs[0]),))[1]  # a vector alone, divisor 1
    assert torch.equal(one.cpu(), in_order(vecs[0]))


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_bf16_without_norm_dot(hard, device, monkeypatch):
    """bf16 with GMVQ_NORM_DOT=0 (config.norm_dot): the norms added per element, as for fp16 and fp32, on
    clustered data far from the origin, where the distance expansion cancels most."""
    from gmvq_kernels import config

    monkeypatch.setenv(config.NORM_DOT_ENV, "0")
    assert not config.norm_dot(torch.bfloat16)
    check_case(13, 37, 8, device, dtype=torch.bfloat16, offset=30.0, hard=hard)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("upstream_only", [None, {"agg_posterior"}], ids=["all", "agg-only"])
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_half_agg_posterior_gradient_with_a_common_part(seed, dtype, upstream_only, hard, device):
    """Ḡ_q̄ + c sends the same gradients as Ḡ_q̄ (Σ_k q̄_k = 1), and a large c is common in training (the
    variance normaliser adds (D/2)·λ_k to every code). Half inputs at D ≤ 64 take Δq in dx's own loop
    (backward.defer_delta_q), with Ḡ_c at each row's argmax code standing in for it until the loop ends:
    with a stand-in of 0 instead, c = 300 fails dx in all four soft cases (and bf16 agg-only fails even
    at c = 0 with Ḡ_q̄ centred on its q̄-weighted mean, one stand-in for all rows). Hard mode too, over
    three seeds of the noise: with the interpreter's truncating bf16 casts (the GPU rounds to nearest)
    seed 7, bf16, all gradients failed dx by 10 %, a whole row ~0.5 % low."""
    check_case(13, 37, 8, device, dtype=dtype, upstream_only=upstream_only, agg_shift=300.0, hard=hard, seed=seed)


# impl="torch"'s peaked-q cases (tests/test_eager.py), on the kernels: two still fail (README, "Correctness")
PEAKED_Q_KNOWN = {"N1-K2-D28-hard": "fp32 hard dx: Ḡ_q̄ − Δq cancels at q's own rounding at the peak (a shift "
                                    "per row would remove it)",
                  "N3-K1-D13": "fp32 d log σ²: ½ Σ e·d against (D/2)·Σ dℓ, summed over the rows before they meet"}


@pytest.mark.parametrize("name", list(PEAKED_Q))
def test_peaked_posterior(name, device, request):
    """A peaked q, where Ḡ_q̄ − Δq cancels. The launcher shifts Ḡ_q̄ by its mean (exact, as Σ_k q_k = 1),
    which keeps fp16 dμ at K = 2 within the bound (2.1× it without the shift); the known failures are
    strict xfails, so that a fix shows."""
    if name in PEAKED_Q_KNOWN:
        request.applymarker(pytest.mark.xfail(reason=PEAKED_Q_KNOWN[name], raises=AssertionError, strict=True))
    N, K, D, opts = PEAKED_Q[name]
    check_case(N, K, D, device, **opts)


@pytest.mark.parametrize("tau", [0.5, 1.0], ids=["tau05", "tau1"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("D", [72, 130], ids=["D72", "D130"])
def test_wide_latents_match_reference(D, hard, tau, device):
    """BLOCK_D 128 and 256, half inputs: the Δ pass runs (the dx pass takes Δq only up to 64), dx forms
    Y − Δy in place from the forward's sums, and hard mode adds the sample's Ḡ_lat·a term after dx's loop
    at 128 but keeps the one-hot in the loop at 256 (in hard mode too the forward keeps the soft sums
    up to D = 256: forward.delta_from_forward). τ = 1 takes the sample from q (tiles.tau_one), and at 256
    dμ draws its noise after Y (backward.py, NOISE_LATE)."""
    check_case(13, 37, D, device, dtype=torch.bfloat16, hard=hard, prior=True, tau=tau)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "splits"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_dx_takes_delta_q_at_block_d_128_when_asked(hard, split, device, monkeypatch):
    """GMVQ_DEFER_DQ_128=1 (config.defer_dq_max_block_d, a GPU's side-by-side timing): half inputs at
    BLOCK_D = 128 (D = 100, a masked tail) take Δq in dx's loop as at D ≤ 64, with the stand-in at each
    row's argmax code and Ḡ_q̄'s common part of 300 that tests it (test_half_agg_posterior_gradient_...),
    and the Δ kernel does not run; without the flag (or on a GPU other than sm_90, which ignores it) it
    runs. With several code splits the launcher adds the splits' Σ a q and Σ a q μ (qa_part, qamu_part)."""
    from gmvq_kernels import backward, config

    launched = []
    delta_kernel = backward._gmvq_bwd_delta_kernel

    class Spy:  # the launcher's ``kernel[grid](...)``, counted
        def __getitem__(self, grid):
            launched.append(grid)
            return delta_kernel[grid]

    monkeypatch.setattr(backward, "_gmvq_bwd_delta_kernel", Spy())
    N, K, D = 13, 37, 100
    if split:  # as test_split_over_codes_matches_reference forces it
        monkeypatch.setattr(config, "sm_count", lambda dev: 8)
        monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
        cfg = config.row_config(D, torch.bfloat16, device)
        assert config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, torch.device(device))[0] > 1
    for flag in (False, True):
        monkeypatch.setenv(config.DEFER_DQ_128_ENV, "1" if flag else "0")
        del launched[:]
        check_case(N, K, D, device, dtype=torch.bfloat16, hard=hard, prior=True, agg_shift=300.0)
        deferred = config.defer_dq_max_block_d(device) >= 128
        assert deferred == (flag and (device == "cpu" or config.arch(device) == "sm_90"))
        assert bool(launched) != deferred, (flag, launched)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D", [6, 130], ids=["D6", "D130"])
def test_hard_sample_terms_over_rows_sorted_by_code(D, dtype, device, monkeypatch):
    """Hard mode's dμ kernel adds the one-hot's terms after its loop, over the rows sorted by their hard
    code (backward.hard_rows), from config.HARD_ROWS_MIN_BLOCKS code blocks on (here from 1; the other
    hard cases with fewer blocks than 8 keep the one-hot in the loop): ~80 rows fall in the first block
    of 16 codes (five row tiles of the interpreter's 16), the rest in a second, partial block, and the
    column kernel runs four row splits (as on a GPU with few code blocks), which share each block's
    rows in whole tiles."""
    from gmvq_kernels import backward

    monkeypatch.setattr(backward, "HARD_ROWS_MIN_BLOCKS", 1)
    monkeypatch.setattr(backward, "split_rows", lambda N, n_col, BLOCK_N, dev: (-(-N // (2 * BLOCK_N)), 2 * BLOCK_N))
    check_case(100, 20, D, device, dtype=dtype, hard=True, prior=True, tau=0.5)


def skip_compiled_global_patch(device):
    """A test that patches a kernel's tl.constexpr globals (the lazy windows): the interpreter reads them
    at each call, a compiled kernel refuses globals changed since it was compiled. On a GPU the lazy
    path runs with its own windows (the tests after it)."""
    if device == "cuda":
        pytest.skip("patches kernel globals: interpreter only")


@pytest.mark.parametrize("case", [dict(dtype=torch.bfloat16, tau=0.2, prior=True),
                                  dict(dtype=torch.bfloat16, hard=True, tau=0.5, prior=True),
                                  dict(dtype=torch.float16, tau=0.3),
                                  dict(dtype=torch.bfloat16, split=True, tau=0.2),
                                  # τ = 1: the sums follow q's maximum (forward.forward_tau_one; soft only)
                                  dict(dtype=torch.bfloat16, prior=True),
                                  dict(dtype=torch.bfloat16, split=True)],
                         ids=["bf16-soft", "bf16-hard", "fp16-soft", "bf16-split", "bf16-soft-tau1", "bf16-split-tau1"])
def test_forward_lazy_rescale(case, device, monkeypatch):
    """The forward keeps each row's y sums relative to a reference that moves only when the row's
    maximum passes it (forward.LAZY_LOG2: FlashAttention-4's lazy rescaling; half inputs from BLOCK_D
    = 128 on). Here from BLOCK_D = 1 and with a window of 1 log2 unit (3 of headroom; fp16 12 and 0),
    so references move at most tiles, within the codebook's splits too (config.split_codes)."""
    from gmvq_kernels import config, forward

    skip_compiled_global_patch(device)
    monkeypatch.setattr(forward, "LAZY_MIN_BLOCK_D", 1)
    for name, value in (("LAZY_LOG2", 1.0), ("LAZY_HEADROOM", 3.0), ("LAZY_LOG2_FP16", 12.0)):
        monkeypatch.setattr(forward, name, tl.constexpr(value))
    case = dict(case)
    if case.pop("split", False):
        monkeypatch.setattr(config, "sm_count", lambda dev: 8)
        monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
    check_case(21, 90, 7, device, **case)


@pytest.mark.parametrize("windows", [None, (1.0, 3.0)], ids=["kernel-windows", "small-windows"])
@pytest.mark.parametrize("tau", [0.2, 1.0], ids=["tau0.2", "tau1"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_forward_lazy_rescale_keeps_rows_independent(hard, tau, windows, device, monkeypatch):
    """The program-wide flag decides when the forward's reference moves, but only the rows past the
    window move: each row's outputs and gradients are bitwise the same whatever the other rows of its
    program hold (as without the lazy rescale). From BLOCK_D = 1, with the kernel's windows and with
    windows of 1 and 3 log2 units (LAZY_LOG2, LAZY_HEADROOM; interpreter only); row 3 swapped for code 85
    (its maximum jumps at the last tile, where no other row's does), rows 9 and 14 for a far-away and a
    NaN row. Moving every row at each move fails it with the small windows (soft, τ = 1; with the
    kernel's, a row whose maximum has not moved since its own last move is moved by exactly 1)."""
    from gmvq_kernels import forward

    monkeypatch.setattr(forward, "LAZY_MIN_BLOCK_D", 1)
    if windows is not None:
        skip_compiled_global_patch(device)
        for name, value in zip(("LAZY_LOG2", "LAZY_HEADROOM"), windows):
            monkeypatch.setattr(forward, name, tl.constexpr(value))
    x, m, lv, lp = make_inputs(16, 90, 7, dtype=torch.bfloat16, prior=True, device=device)
    other = x.clone()
    other[3] = m[85]
    other[9] = -3.0 * x[9]
    other[14, 1] = float("nan")
    keep = [i for i in range(16) if i not in (3, 9, 14)]
    runs = []
    for rows in (x, other):
        leaves = [t.clone().requires_grad_() for t in (rows, m, lv, lp)]
        out = gk.gmvq(*leaves, tau=tau, hard=hard, seed=5, impl="triton")
        (out.quantized.float().sum() + out.latent_nll.sum()).backward()
        runs.append((out, leaves[0].grad))
    (a, dxa), (b, dxb) = runs
    for name, u, w in zip(OUT_FIELDS, a, b):
        if name != "agg_posterior":
            assert torch.equal(u[keep], w[keep]), name
    assert torch.equal(dxa[keep], dxb[keep])


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "GMVQ_LAZY_RESCALE=0"])
@pytest.mark.parametrize("dtype, hard, tau", [(torch.bfloat16, False, 0.2), (torch.float16, False, 0.2),
                                              (torch.bfloat16, True, 1.0)], ids=["bf16", "fp16", "bf16-hard-tau1"])
def test_forward_lazy_rescale_at_block_d_128(dtype, hard, tau, lazy, device):
    """The same with the kernel's own windows at D = 70 (BLOCK_D = 128: the lazy path on a GPU); fp16's
    keeps p_y within what an fp16 operand holds; hard mode at τ = 1 takes its sample from q's exponentials
    (forward.forward_tau_one) beside the lazy sums. GMVQ_LAZY_RESCALE=0 rescales at every tile."""
    from gmvq_kernels import config, forward

    with config.env_flag(config.LAZY_RESCALE_ENV, lazy):
        assert forward.lazy_rescale_on(dtype, hard, True, config.block_d(70)) == lazy
        check_case(13, 40, 70, device, dtype=dtype, hard=hard, prior=True, tau=tau)


def test_forward_lazy_rescale_off_on_compute_capability_10(monkeypatch):
    """triton 3.7.1 fails to compile the lazy forward for sm_100 (tests/compile_kernels.py 100): such a
    device takes the rescale at every tile; sm_90 and sm_120 keep the lazy path."""
    from gmvq_kernels import config, forward

    for name, lazy in (("sm_90", True), ("sm_100", False), ("sm_103", False), ("sm_120", True)):
        monkeypatch.setattr(config, "arch", lambda device, name=name: name if str(device).startswith("cuda") else None)
        assert forward.lazy_rescale_on(torch.bfloat16, False, True, 128, "cuda") == lazy, name
        assert forward.lazy_rescale_on(torch.bfloat16, False, True, 128, "cpu")


@pytest.mark.parametrize("tau, D", [(0.5, 8), (1.0, 70)], ids=["tau0.5-D8", "tau1-D70"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_half_outputs_do_not_depend_on_grad_mode(hard, tau, D, device):
    """Half inputs keep the soft sums for the backward only when one can follow (an input needs a
    gradient): without, the forward writes none, and every output is bitwise the same either way. At
    τ = 1 and D = 70 (BLOCK_D = 128: the sums move lazily when kept) too: there the hard forward picks
    its sample from p·(1/log₂ u) relative to q's maximum with or without the sums
    (forward.forward_tau_one)."""
    from gmvq_kernels import forward
    from gmvq_kernels.spec import component_terms

    x, m, lv, _ = make_inputs(13, 37, D, dtype=torch.bfloat16, device=device, requires_grad=True)
    kw = dict(tau=tau, hard=hard, seed=3, impl="triton")
    trained = gk.gmvq(x, m, lv, **kw)
    with torch.no_grad():
        evaluated = gk.gmvq(x, m, lv, **kw)
    for name, a, b in zip(OUT_FIELDS, trained, evaluated):
        assert torch.equal(a.detach(), b), name
    log_pi = torch.full((37,), -math.log(37), device=device)  # uniform prior
    a, b, v = (t.detach().contiguous() for t in component_terms(lv, log_pi, D))
    maxima = []
    for for_backward, shape in ((True, (13, D + 2)), (False, None)):
        _, saved = forward.gmvq_fwd(x.detach(), m.detach(), a, b, v, tau=tau, hard=hard, seed=3, noise=None,
                                    dot_precision="ieee", for_backward=for_backward)
        assert (None if saved["y_sums"] is None else tuple(saved["y_sums"].shape)) == shape
        # ||x||², which every later pass reads instead of forming it from its tiles
        xf = x.detach().float()
        torch.testing.assert_close(saved["x_sq"], (xf * xf).sum(1), rtol=1e-6, atol=0)
        maxima.append(saved["stats"][:, :3])  # m_q, log₂ S_q, m_y: one path either way (log₂ S_y may round apart)
    assert torch.equal(*maxima)


@pytest.mark.parametrize("case", [dict(shape=(40, 200, 20), hard=True, prior=True, tau=0.5),
                                  dict(shape=(13, 37, 11), tau=0.2, explicit_noise=True),
                                  dict(shape=(21, 45, 6), hard=True, upstream_only={"quantized", "entropy"}),
                                  # half: the forward's soft sums merged from the splits, Δy from them
                                  dict(shape=(13, 37, 11), dtype=torch.bfloat16, offset=30.0),
                                  dict(shape=(40, 200, 20), dtype=torch.float16, hard=True, prior=True),
                                  # τ = 1: the splits' hard samples compared by their ℓ + g (forward.P_H_Y)
                                  dict(shape=(40, 200, 20), dtype=torch.bfloat16, hard=True, prior=True)],
                         ids=["hard-prior", "soft-noise", "partial", "soft-bf16-clustered", "hard-fp16", "hard-bf16-tau1"])
def test_split_over_codes_matches_reference(monkeypatch, case, device):
    """Few row blocks split the codebook of the forward, Δ and dx kernels across programs (the GPU path
    at small N, config.split_codes): torch merges the forward's per-split softmax states
    (forward.combine_splits) and adds the backward's partial sums. Forced here with a small SM count
    and no size threshold (several splits, the last one short) and checked as every other case."""
    from gmvq_kernels import config

    monkeypatch.setattr(config, "sm_count", lambda dev: 8)
    monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
    case = dict(case)
    N, K, D = case.pop("shape")
    cfg = config.row_config(D, case.get("dtype", torch.float32), device)
    assert config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, torch.device(device))[0] > 1
    check_case(N, K, D, device, **case)


# which outputs send an upstream gradient (by name; the others send None)
UPSTREAM = {
    "only-agg": {"agg_posterior"},
    "only-quantized": {"quantized"},
    "lse-entropy": {"log_likelihood", "entropy"},
    "latent-var": {"latent_nll", "mixture_var"},
}


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("names", list(UPSTREAM.values()), ids=list(UPSTREAM))
def test_partial_upstream_gradients(names, hard, device):
    check_case(21, 45, 6, device, hard=hard, prior=True, upstream_only=names)


@pytest.mark.parametrize("prec", ["ieee", "tf32x3", "tf32"])
def test_dot_precisions_run(prec, device):
    # the interpreter ignores tf32 rounding (docs/design.md §6): this pins that every precision is accepted
    # and correct on CPU; the GPU check (benchmarks/gpu_check.py) measures the tf32 error for real.
    if device == "cuda" and prec == "tf32":
        pytest.skip("tf32 error is checked with its own tolerance in benchmarks/gpu_check.py")
    check_case(13, 37, 11, device, dot_precision=prec)


def test_extreme_inputs_stay_finite(device):
    # distances of ~1e4 and log-variances of ±20, plus K = 1 and N = 1
    for N, K, D, shift in [(9, 20, 4, 20.0), (9, 20, 4, -20.0), (1, 1, 3, -20.0), (5, 1, 2, 20.0)]:
        x, m, lv, lp = make_inputs(N, K, D, prior=True, device=device, scale=50.0)
        lv = torch.full_like(lv, shift)
        leaves = [t.requires_grad_() for t in (x, m, lv, lp)]
        out = gk.gmvq(*leaves, impl="triton", hard=True, tau=0.3)
        for name, o in zip(out._fields, out):
            assert torch.isfinite(o.double()).all(), name
        sum(o.double().sum() for o in out if o.is_floating_point()).backward()
        for t in leaves:
            assert torch.isfinite(t.grad).all()


def test_deterministic_bitwise(device):
    inputs = make_inputs(40, 90, 12, prior=True, device=device)
    a, ga, up = run(inputs, "triton", hard=True, tau=0.5, seed=3)
    b, gb, _ = run(inputs, "triton", hard=True, tau=0.5, seed=3, upstream=up)
    for x, y in zip(list(a) + ga, list(b) + gb):
        assert torch.equal(x, y)


@pytest.mark.parametrize("seed", [2**40 + 17, 2**64 - 5])
def test_in_kernel_noise_is_gumbel_noise(device, seed):
    """Explicit noise = gumbel_noise(seed) must give bit-identical outputs to in-kernel noise."""
    inputs = make_inputs(19, 70, 5, device=device)
    implicit = gk.gmvq(*inputs, impl="triton", seed=seed, tau=0.3)
    explicit = gk.gmvq(*inputs, impl="triton", noise=gk.gumbel_noise(19, 70, seed, device=device), tau=0.3)
    for name, a, b in zip(OUT_FIELDS, implicit, explicit):
        assert torch.equal(a, b), name


@triton.jit
def _noise_codes_by_rows_kernel(out_ptr, k_start, lo, hi):
    g = gumbel_tile(lo, hi, tl.arange(0, 8).to(tl.int64) + 3, k_start, 32, True)
    tl.store(out_ptr + tl.arange(0, 32)[:, None] * 8 + tl.arange(0, 8)[None, :], g)


def test_transposed_noise_tile_is_the_noise_transposed(device):
    """The dμ kernel draws its (codes × rows) noise tile in that orientation (noise.gumbel_tile with
    CODES_FIRST, no transpose through shared memory): bit for bit gumbel_noise's, transposed."""
    lo, hi = split_seed(11)
    out = torch.empty(32, 8, device=device)
    _noise_codes_by_rows_kernel[(1,)](out, 36, lo, hi)
    assert torch.equal(out, gk.gumbel_noise(11, 68, 11, device=device)[3:, 36:].T)


@triton.jit
def _inv_log2u_kernel(out_ptr, lo, hi):
    r = gumbel_tile(lo, hi, tl.arange(0, 8).to(tl.int64), 0, 32, False, True)
    tl.store(out_ptr + tl.arange(0, 8)[:, None] * 32 + tl.arange(0, 32)[None, :], r)


def test_inv_log2u_tile_is_the_noise_exponentiated(device):
    """What the backward's dx and dμ take at τ = 1 in place of g (noise.gumbel_tile with INV_LOG2U): 1/log₂ u
    of the same draws, i.e. −ln 2·exp(g) of gumbel_noise's g, to fp32 rounding (g itself is rounded there)."""
    lo, hi = split_seed(23)
    out = torch.empty(8, 32, device=device)
    _inv_log2u_kernel[(1,)](out, lo, hi)
    want = -math.log(2.0) * gk.gumbel_noise(8, 32, 23, device=device).double().exp()
    torch.testing.assert_close(out.double().cpu(), want.cpu(), rtol=2e-6, atol=0)


@triton.jit
def _nan_sample(q, inv_log2u, c):
    return q * inv_log2u * c * float("nan")


def test_tau_one_takes_y_from_q(monkeypatch, device):
    """The backward takes y from q (tiles.sample_prob: tiles.tau_one) exactly at τ = 1 with the noise
    drawn in the kernels, not at another τ nor with explicit noise (which has no u): with sample_prob
    made to return NaN, only the first case's gradients are NaN."""
    from gmvq_kernels import backward

    monkeypatch.setattr(backward, "sample_prob", _nan_sample)
    inputs = make_inputs(13, 37, 11, device=device)
    for tau, explicit, poisoned in ((1.0, False, True), (0.5, False, False), (1.0, True, False)):
        noise = gk.gumbel_noise(13, 37, 5, device=device) if explicit else None
        _, grads, _ = run(inputs, "triton", tau=tau, seed=5, noise=noise)
        assert bool(torch.isnan(grads[0]).any()) == poisoned, (tau, explicit)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_tau_one_keeps_one_code_exact(hard, device):
    """At K = 1 the sample is exactly 1, and a gradient that does not depend on x there (the quantized
    output's, the mixture variance's) exactly 0; y through q's exponentials (y = q·(1/log₂ u)·c) is 1 only to
    rounding and gave ~10⁻⁷ against a bound of 0 (tests/random_sweep.py, seed 31), so τ = 1 at K = 1
    takes the sample's own softmax (tiles.tau_one)."""
    upstream = {"mixture_var"} if hard else {"quantized"}
    check_case(14 if hard else 2, 1, 1, device, hard=hard, prior=not hard, seed=7235433766430145559,
               scale=0.455 if hard else 4.754, log_var_scale=1.0, upstream_only=upstream)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_tau_one_delta_y_is_a_mean_of_y(hard, device):
    """fp32 at τ = 1 with one code holding the whole sample (K = 2, the other's q ~10⁻²⁵) and Y ≈ 80 (the
    latent NLL's d·a): y = q·(1/log₂ u)·c sums to 1 only to an ulp, Y − Δy with Δy = Σ_k y Y left
    ~10⁻⁷·|Y| per row, and d log σ² multiplies it by d·a − D/2: 5.5·10⁻⁴ against a bound of 1.4·10⁻⁴
    (tests/random_sweep.py, seed 37). The Δ pass divides Δy by Σ_k y of the same y (backward.py)."""
    check_case(3, 2, 18, device, hard=hard, seed=1791767374510399204, scale=0.7906746237688048, log_var_scale=1.0)


@triton.jit
def _nan_gumbel(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K: tl.constexpr,
                CODES_FIRST: tl.constexpr = False, INV_LOG2U: tl.constexpr = False):
    g = tiles.noise_tile(noise_ptr, seed_lo, seed_hi, offs_n, offs_k, k_start, N, K, BLOCK_K, CODES_FIRST, INV_LOG2U)
    if not INV_LOG2U:
        g = g * float("nan")
    return g


def test_forward_tau_one_takes_y_from_q(monkeypatch, device):
    """The forward takes the sample's numerator from q's (forward.forward_tau_one) exactly at τ = 1 with
    the noise drawn in the kernel, for bf16 and fp32 inputs: with the noise itself (g, not 1/log₂ u) made
    NaN there, only those cases' outputs stay finite; at another τ, with explicit noise, or for fp16
    inputs the forward adds g and its outputs turn NaN."""
    from gmvq_kernels import forward

    skip_compiled_global_patch(device)
    monkeypatch.setattr(forward, "noise_tile", _nan_gumbel)
    for dtype, tau, explicit, finite in ((torch.bfloat16, 1.0, False, True), (torch.float32, 1.0, False, True),
                                         (torch.bfloat16, 0.5, False, False), (torch.bfloat16, 1.0, True, False),
                                         (torch.float16, 1.0, False, False)):
        x, m, lv, _ = make_inputs(13, 37, 11, dtype=dtype, device=device)
        noise = gk.gumbel_noise(13, 37, 5, device=device) if explicit else None
        with torch.no_grad():
            out = gk.gmvq(x, m, lv, tau=tau, seed=5, noise=noise, impl="triton")
        assert bool(torch.isfinite(out.quantized).all()) == finite, (dtype, tau, explicit)


@triton.jit
def _to_bf16_kernel(src_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(src_ptr + offs).to(tl.bfloat16))


def test_interpreter_bf16_cast_rounds_like_torch(device):
    """A kernel's fp32 → bf16 cast rounds to nearest even, as the GPU's cvt.rn and torch do (the
    interpreter on its own truncates: tests/conftest.py applies testing.interpreter_rounds_bf16_to_nearest).
    Exact ties both ways, values just off them, ±inf, NaN, overflow to inf, subnormals, −0."""
    special = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, 1 + 2**-8 - 2**-20, -(1 + 3 * 2**-8),
                            float("inf"), float("-inf"), float("nan"), 3.4028234e38, -3.4028234e38, 2**-140,
                            3 * 2**-149, -0.0, 0.0, 4.0351562, 2.092])
    x = torch.cat([special, torch.randn(256 - len(special), generator=torch.Generator().manual_seed(0)) * 100])
    out = torch.empty(256, dtype=torch.bfloat16, device=device)
    _to_bf16_kernel[(1,)](x.to(device), out, BLOCK=256)
    want = x.to(torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(out.cpu().isnan(), nan)
    assert torch.equal(out.cpu()[~nan].view(torch.int16), want[~nan].view(torch.int16))


@triton.jit
def _min_max_kernel(src_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(src_ptr + offs)
    tl.store(out_ptr + offs, tl.minimum(x, 0.0))
    tl.store(out_ptr + BLOCK + offs, tl.maximum(x, 0.0))
    tl.store(out_ptr + 2 * BLOCK + offs, tl.minimum(x, 0.0, propagate_nan=tl.PropagateNan.ALL))
    tl.store(out_ptr + 3 * BLOCK + offs, tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL))


def test_interpreter_min_max_treat_nan_like_the_gpu(device):
    """A default ``tl.minimum``/``tl.maximum`` returns the other operand where one is NaN, as PTX
    min.f32/max.f32 do on the GPU; ``PropagateNan.ALL`` returns NaN (min.NaN.f32). Triton's interpreter
    before 3.8 propagated NaN either way: tests/conftest.py applies testing.interpreter_min_max_ignore_nan.
    The kernels' NaN policy counts on the difference (tiles.softmax_log2prob)."""
    x = torch.tensor([float("nan"), -1.0, 2.0, float("-inf"), float("inf"), -0.0, 0.5, float("nan")])
    out = torch.empty(4 * 8, device=device)
    _min_max_kernel[(1,)](x.to(device), out, BLOCK=8)
    out = out.cpu().view(4, 8)
    nan = x.isnan()
    assert torch.equal(out[0], torch.where(nan, 0.0, torch.minimum(x, torch.zeros(()))))
    assert torch.equal(out[1], torch.where(nan, 0.0, torch.maximum(x, torch.zeros(()))))
    assert torch.equal(out[2].isnan(), nan) and torch.equal(out[3].isnan(), nan)
    assert torch.equal(out[2][~nan], torch.minimum(x, torch.zeros(()))[~nan])
    assert torch.equal(out[3][~nan], torch.maximum(x, torch.zeros(()))[~nan])


@triton.jit
def _dot_kernel(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    a = tl.load(a_ptr + tl.arange(0, M)[:, None] * K + tl.arange(0, K)[None, :])
    b = tl.load(b_ptr + tl.arange(0, K)[:, None] * N + tl.arange(0, N)[None, :])
    tl.store(out_ptr + tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :], tl.dot(a, b, input_precision="ieee"))


@pytest.mark.skipif(not gk.config.INTERPRET, reason="the interpreter's dots")
def test_interpreter_exact_fp32_dots():
    """Inside ``testing.interpreter_exact_fp32_dots`` an fp32 tl.dot is the float64 product rounded once
    (whatever the tile's orientation: (a b)ᵀ = bᵀ aᵀ bit for bit), and the interpreter's own dot is
    back after it (tests/random_sweep.py --exact-dots once dropped it at once: the context's generator
    was collected)."""
    from triton.runtime import interpreter

    from gmvq_kernels.testing import interpreter_exact_fp32_dots

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 64, generator=g) * 10, torch.randn(64, 32, generator=g)
    plain = interpreter.InterpreterBuilder.create_dot

    def dot(a, b):
        out = torch.empty(a.shape[0], b.shape[1])
        _dot_kernel[(1,)](a.contiguous(), b.contiguous(), out, M=a.shape[0], K=a.shape[1], N=b.shape[1])
        return out

    with interpreter_exact_fp32_dots():
        ab, ba = dot(a, b), dot(b.T, a.T)
        assert torch.equal(ab, (a.double() @ b.double()).float())
        assert torch.equal(ab, ba.T)
    assert interpreter.InterpreterBuilder.create_dot is plain


@triton.jit
def _code_index_kernel(out_ptr, base_ptr, k_lo, W):
    for k_start in range(k_lo, k_lo + 8, 4):  # a loop's k_start, as the row kernels' (32-bit there)
        at = base_ptr + tiles.code_index(k_start + tl.arange(0, 4), True)[:, None] * W + tl.arange(0, 2)[None, :]
        rel = at.to(tl.int64) - base_ptr.to(tl.int64)  # bytes from the base
        tl.store(out_ptr + (k_start - k_lo) * 2 + tl.arange(0, 4)[:, None] * 2 + tl.arange(0, 2)[None, :], rel)


def test_code_index_offsets_past_2_31(device):
    """The code tiles' addresses in a codebook of 2³¹ elements or more (tiles.code_index with WIDE, which
    tiles.wide_codes sets there: the means, the codes' norm operand) stay right where k·D passes 2³¹
    and 2³² (2²⁴ codes at D = 256): 32-bit products wrap there (the interpreter wraps them as a GPU does)."""
    base = torch.zeros(4, dtype=torch.bfloat16, device=device)
    out = torch.zeros(8, 2, dtype=torch.int64, device=device)
    k_lo, W = 2**24 - 2, 256  # rows 2²⁴ − 2 .. 2²⁴ + 5: k·W from 2³² − 512 to 2³² + 1280
    _code_index_kernel[(1,)](out, base, k_lo, W)
    k = torch.arange(k_lo, k_lo + 8, dtype=torch.int64)[:, None]
    assert torch.equal(out.cpu(), (k * W + torch.arange(2)) * base.element_size())
    # where the row kernels take that path: K·max(D, 16) ≥ 2³¹ (the norm operand is (K, 16))
    assert tiles.wide_codes(dict(K=2**23, D=256)) and not tiles.wide_codes(dict(K=2**23 - 1, D=256))
    assert tiles.wide_codes(dict(K=2**27, D=4)) and not tiles.wide_codes(dict(K=2**27 - 1, D=16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_wide_codes_path_matches_reference(dtype, device, monkeypatch):
    """The row kernels with 64-bit code offsets (WIDE_CODES, a codebook of 2³¹ elements or more) forced
    on at a small shape: every output and gradient, soft and hard, and the tokenizer's codes, as on the
    default path."""
    monkeypatch.setattr(tiles, "WIDE_CODES_MIN", 0)
    check_case(13, 37, 11, device, dtype=dtype, prior=True)
    check_case(13, 37, 11, device, dtype=dtype, hard=True, tau=0.5)
    x, means, log_var, log_prior = make_inputs(13, 37, 11, dtype=dtype, prior=True, device=device, seed=3)
    want = gk.gmvq_reference(x.cpu().double(), means.cpu().double(), log_var.cpu().double(),
                             log_prior.cpu().double()).codes
    assert torch.equal(gk.gmvq_encode(x, means, log_var, log_prior, impl="triton").cpu(), want)


@triton.jit
def _noise_rows_kernel(out_ptr, row0, lo, hi):
    offs_n = row0 + tl.arange(0, 16).to(tl.int64)
    g = gumbel_tile(lo, hi, offs_n, 0, 16)
    tl.store(out_ptr + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :], g)


def test_noise_row_counter_does_not_wrap(device):
    """Rows n and n + 2**32 get different noise (the kernel helper keeps both halves of n), and the
    in-kernel noise of row 2**32 + 3 is the NumPy twin's."""
    import numpy as np

    lo, hi = split_seed(5)
    a, b = torch.empty(16, 16, device=device), torch.empty(16, 16, device=device)
    _noise_rows_kernel[(1,)](a, 3, lo, hi)
    _noise_rows_kernel[(1,)](b, 3 + 2**32, lo, hi)
    assert not torch.equal(a, b)
    assert torch.equal(a, gk.gumbel_noise(19, 16, 5, device=device)[3:])
    r = torch.from_numpy(philox_words_numpy(16, 16, 5, row_offset=3 + 2**32).astype(np.int64))
    ref = words_to_gumbel(r)
    torch.testing.assert_close(b.cpu(), ref, rtol=1e-6, atol=1e-6)


@triton.jit
def _words_kernel(r_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _uniform_to_gumbel(tl.load(r_ptr + offs).to(tl.uint32)))


def test_kernel_transform_matches_float64_over_all_tails(device):
    """The kernels' transform (the series for u near 1, the log elsewhere) against float64, on the
    words of test_noise.py's tail test (interpreter: accurate logs; a GPU's fast logs are checked by
    benchmarks/gpu_check.py's noise check)."""
    from test_noise import assert_matches_float64, tail_words

    words = tail_words()
    out = torch.empty(words.numel(), device=device)
    _words_kernel[(words.numel() // 1024,)](words.to(torch.int32).to(device), out, BLOCK=1024)
    assert_matches_float64(words, out)


def test_extreme_words_give_finite_noise(device):
    """Every 32-bit word maps to a finite g, the extremes included (the top word once gave u = 1.0 and
    g = +inf, poisoning a whole row with NaN: seen on an H200 at 10⁷+ draws, never in small tests)."""
    words = torch.tensor([0, 1, 511, 512, 2**31 - 1, 2**31, 2**32 - 513, 2**32 - 512, 2**32 - 2, 2**32 - 1]
                         + list(range(6)), dtype=torch.int64)
    out = torch.empty(16, device=device)
    _words_kernel[(1,)](words.to(torch.int32).to(device), out, BLOCK=16)  # int32 bits of the uint32 words
    assert torch.isfinite(out).all(), out
    ref = words_to_gumbel(words)
    assert torch.isfinite(ref).all(), ref
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [2**35 + 9, 2**64 - 3])  # the second is negative as the op's int64
def test_gumbel_noise_matches_numpy_twin(seed):
    if not gk.functional.config.INTERPRET:
        pytest.skip("the NumPy twin serves CPU without the interpreter")
    import numpy as np

    g = gk.gumbel_noise(21, 37, seed=seed)
    r = torch.from_numpy(philox_words_numpy(21, 37, seed).astype(np.int64))
    ref = words_to_gumbel(r)
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-6)
    # a seed tensor holds the same 64 bits in two's complement; a NumPy integer is an integer
    assert torch.equal(gk.gumbel_noise(21, 37, seed=torch.tensor(seed - 2**64 if seed >= 2**63 else seed)), g)
    assert torch.equal(gk.gumbel_noise(21, 37, seed=np.uint64(seed)), g)


def test_gumbel_max_frequencies_in_kernel(device):
    from test_reference import chi_square_pvalue

    K, N = 5, 3000
    m = torch.tensor([[0.0], [0.5], [1.0], [1.5], [3.0]], device=device)
    x = torch.full((N, 1), 0.8, device=device)
    lv = torch.zeros(K, device=device)
    out = gk.gmvq(x, m, lv, hard=True, seed=99, impl="triton")
    picked = (out.quantized[:, 0:1] == m.T).float().argmax(1)
    counts = torch.bincount(picked, minlength=K).cpu().numpy()
    q = gk.gmvq(x[:1], m, lv, impl="triton").agg_posterior.cpu().double().numpy()
    assert chi_square_pvalue(counts, q) > 1e-3


class AllocationRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape), t.numel() * t.element_size()))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("hard", [False, True])
def test_no_n_by_k_allocation(hard, dtype, device):
    """bf16 at D = 32: the norm operands and the fp32 gradient partials of half inputs."""
    # N·K bytes (the bound: 24576, 49152 bf16) lies above N·D, K·D (fp32: the gradient partials) and the norm
    # operands' (N, 16) and (K, 16) (bf16: tiles.norm_operand; fp32 under the interpreter), sizes compared in bytes
    N, K, D = (96, 256, 2) if dtype == torch.float32 else (192, 256, 32)
    x, m, lv, lp = [t.requires_grad_() for t in make_inputs(N, K, D, dtype=dtype, prior=True, device=device)]
    rec = AllocationRecorder()
    with rec:
        out = gk.gmvq(x, m, lv, lp, impl="triton", hard=hard)
        loss = gk.albo_loss(out, lp) + out.quantized.square().sum() + out.entropy.sum() + out.log_likelihood.sum()
        loss.backward()
    assert rec.shapes, "the recorder saw nothing"
    biggest = max(rec.shapes, key=lambda s: s[2])
    assert biggest[2] < N * K * 4 // 4, f"N×K-sized allocation (bytes): {biggest}"
    # and the reference does allocate N×K (the recorder can see it)
    rec2 = AllocationRecorder()
    with rec2:
        gk.gmvq(x, m, lv, lp, impl="reference")
    assert max(s[2] for s in rec2.shapes) >= N * K * 4


@settings(max_examples=12, deadline=None, derandomize=True)  # fixed examples: CI must not flake
@given(N=st.integers(1, 40), K=st.integers(1, 70), D=st.integers(1, 24), hard=st.booleans(),
       prior=st.booleans(), tau=st.sampled_from([0.1, 1.0, 3.0]), scale=st.sampled_from([0.1, 1.0, 10.0]),
       explicit_noise=st.booleans(), seed=st.integers(0, 2**64 - 1), log_var_scale=st.sampled_from([0.3, 2.0]))
def test_property_kernel_matches_reference(N, K, D, hard, prior, tau, scale, explicit_noise, seed, log_var_scale):
    """Both impls on random valid inputs (shapes, scales, τ, prior, hard/soft, seeded and explicit noise)
    agree within the three-way tolerance, and every kernel output and gradient is finite."""
    from conftest import DEVICE
    check_case(N, K, D, DEVICE, hard=hard, prior=prior, tau=tau, scale=scale, explicit_noise=explicit_noise,
               seed=seed, log_var_scale=log_var_scale)


@pytest.mark.slow
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("explicit_noise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_full_cross_product(shape, dtype, explicit_noise, prior, hard, device):
    check_case(*shape, device, dtype=dtype, explicit_noise=explicit_noise, prior=prior, hard=hard, tau=0.7)


@pytest.mark.parametrize("where", ["device", "host"])
@pytest.mark.parametrize("dtype, hard", [(torch.float32, True), (torch.bfloat16, False)],
                         ids=["fp32-hard", "bf16-soft"])
def test_seed_read_on_device_matches_the_int_seed(monkeypatch, dtype, hard, where, device):
    """A seed tensor the kernels read from device memory as they run (noise.seed_on_device: on CUDA;
    here a CPU tensor stands in, under the interpreter) gives the int seed's outputs, gradients and
    noise bit for bit, high key word included; and the backward uses the value the forward saw, though
    the tensor is advanced in between (what a CUDA-graph step does). fp32 hard: the Δ pass draws the
    noise too; bf16 soft: the forward's sums and the dx and dμ draws. "host": a CPU seed tensor, which
    the eager forward reads once as a number (autograd.EagerFused), the same."""
    from gmvq_kernels import noise
    from gmvq_kernels.noise import seed_tensor

    seed = 2**63 + 12345
    inputs = make_inputs(13, 37, 11, dtype=dtype, prior=True, device=device, seed=3)

    def step(s, advance=False):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = gk.gmvq(*leaves, tau=0.5, hard=hard, seed=s, impl="triton")
        if advance:
            s.add_(1)
        (gk.albo_loss(out) + out.quantized.float().square().sum()).backward()
        return [*out, *(t.grad for t in leaves)]

    want = step(seed)
    if where == "host":
        got = step(seed_tensor(seed), advance=True)
    else:
        if torch.device(device).type == "cpu":
            monkeypatch.setattr(noise, "seed_on_device", lambda s: isinstance(s, torch.Tensor))
        got = step(seed_tensor(seed).to(device), advance=True)
    for name, a, b in zip(OUT_FIELDS + ("dx", "dmeans", "dlog_var", "dlog_prior"), want, got):
        assert torch.equal(a, b), name
    assert torch.equal(gk.gumbel_noise(13, 37, seed_tensor(seed).to(device), device=device),
                       gk.gumbel_noise(13, 37, seed, device=device))


@pytest.mark.parametrize("hard", [False, True])
def test_every_launch_asks_for_fma_contraction(hard, device, monkeypatch):
    """Each kernel launch of a fwd+bwd (bf16, split codebook and rows), the encode path and gumbel_noise
    passes config.FP_FUSION: triton 3.9 warns that 3.10 stops contracting multiply-adds by default, and
    the kernels were measured and verified with them."""
    from gmvq_kernels import backward, config, encode, forward, noise

    seen = {}

    class Watch:  # the kernel, noting the launch's enable_fp_fusion
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.setdefault(self.name, set()).add(kwargs.get("enable_fp_fusion"))
                return self.kernel[grid](*args, **kwargs)
            return launch

    for mod in (forward, backward, encode, noise, tiles):
        for attr in dir(mod):
            if attr.startswith("_") and attr.endswith("_kernel"):
                monkeypatch.setattr(mod, attr, Watch(attr, getattr(mod, attr)))
    monkeypatch.setattr(config, "sm_count", lambda dev: 8)
    monkeypatch.setattr(config, "SPLIT_MIN_CODES", 0)
    x, m, lv, lp = [t.requires_grad_() for t in make_inputs(40, 70, 20, dtype=torch.bfloat16, prior=True,
                                                             device=device)]
    out = gk.gmvq(x, m, lv, lp, impl="triton", hard=hard)
    (gk.albo_loss(out, lp) + out.quantized.float().square().sum()).backward()
    gk.gmvq_encode(x.detach(), m.detach(), lv.detach(), lp.detach(), impl="triton")
    gk.gumbel_noise(3, 5, seed=1, device=device)
    assert {"_gmvq_fwd_kernel", "_gmvq_fwd_colsum_kernel", "_gmvq_bwd_dx_kernel", "_gmvq_bwd_dmu_kernel",
            "_gmvq_encode_kernel", "_gumbel_noise_kernel", "_code_terms_kernel", "_finish_splits_kernel"} <= set(seen)
    assert all(flags == {True} for flags in seen.values()), seen


def test_launch_rules_match_triton_heuristics():
    """tiles.heuristics (one dict of the arguments per launch: host time) hands a kernel exactly what
    triton.heuristics would, a rule that reads an earlier rule's value included, and every kernel of the
    package with launch rules takes it."""
    from triton.runtime.autotuner import Heuristics

    from gmvq_kernels import backward, encode, forward

    class Kernel:  # returns what it would be launched with
        arg_names = ["K", "BLOCK_K", "ptr"]

        def run(self, *args, **kwargs):
            return args, kwargs

    rules = {"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0, "BOTH": lambda a: a["EVEN_K"] and a["ptr"] is None}
    for args, kwargs in [((64, 32, None), {}), ((65,), dict(BLOCK_K=32, ptr=None)), ((64, 32, 1.0), {})]:
        want = triton.heuristics(rules)(Kernel()).run(*args, **kwargs)
        assert tiles.heuristics(rules)(Kernel()).run(*args, **kwargs) == want
    ruled = [getattr(mod, a) for mod in (forward, backward, encode) for a in dir(mod)
             if isinstance(getattr(mod, a), Heuristics)]
    assert len(ruled) == 6 and all(isinstance(k, tiles._Rules) for k in ruled), ruled
