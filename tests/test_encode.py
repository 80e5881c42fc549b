"""The tokenizer path: gmvq_encode (fused codes-only kernel) and gmvq_decode against the reference, and
the module's codes (the hard sample's code in training, argmax_k ℓ in encode/eval)."""
import pytest
import torch

import gmvq_kernels as gk
from gmvq_kernels.testing import make_inputs

# D ≤ 32 forms the codes' norms in the kernel, D > 32 reads spec.code_sq_norms (encode.gmvq_encode_fwd)
SHAPES = [(64, 64, 16), (13, 37, 11), (40, 200, 20), (1, 1, 1), (23, 1, 5), (17, 40, 1), (29, 50, 40)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-K{}-D{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prior", [False, True])
def test_encode_matches_reference_codes(shape, dtype, prior, device):
    N, K, D = shape
    x, means, log_var, log_prior = make_inputs(N, K, D, dtype=dtype, prior=prior, device=device,
                                               seed=N * 1000 + K + D, log_var_scale=1.0)
    got = gk.gmvq_encode(x, means, log_var, log_prior, impl="triton")
    assert got.dtype == torch.int64 and got.shape == (N,)
    want = gk.gmvq_reference(x.cpu().double(), means.cpu().double(), log_var.cpu().double(),
                             None if log_prior is None else log_prior.cpu().double()).codes
    assert torch.equal(got.cpu(), want), f"codes differ at {(got.cpu() != want).nonzero().flatten().tolist()}"
    # the chunked reference gives the same codes as the full one (chunks of 7 rows: several chunks)
    chunked = gk.reference.gmvq_encode_reference(x.cpu(), means.cpu(), log_var.cpu(),
                                                 None if log_prior is None else log_prior.cpu(), chunk=7)
    assert torch.equal(chunked, gk.gmvq_reference(x.cpu(), means.cpu(), log_var.cpu(),
                                                  None if log_prior is None else log_prior.cpu()).codes)
    # and the training forward's codes are the same codes
    assert torch.equal(gk.gmvq(x, means, log_var, log_prior, impl="triton").codes, got)


def test_encode_per_component_variance_changes_the_code(device):
    """Nearest mean is not the answer when variances differ: x sits nearer μ_0, but μ_1 is so broad that
    its density at x is higher (the kernel must apply a and b, not just the distance)."""
    x = torch.tensor([[0.0, 0.0]], device=device)
    means = torch.tensor([[1.0, 0.0], [2.0, 0.0]], device=device)
    narrow = torch.tensor([-6.0, 0.0], device=device)  # σ_0² = e⁻⁶: ℓ_0 ≈ −196, ℓ_1 = −2 (+ equal constants)
    for impl in ("triton", "reference"):
        assert gk.gmvq_encode(x, means, narrow, impl=impl).tolist() == [1]
        assert gk.gmvq_encode(x, means, torch.zeros(2, device=device), impl=impl).tolist() == [0]


def test_encode_ties_and_non_finite_rows(device):
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], device=device)
    x = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [float("inf"), 1.0], [0.9, 0.0]], device=device)
    for impl in ("triton", "reference"):
        codes = gk.gmvq_encode(x, means, torch.zeros(3, device=device), impl=impl)
        assert codes.tolist() == [0, -1, -1, 0], impl  # exact ties: the lowest index, as torch.argmax
    z = gk.gmvq_decode(codes.cpu(), means.cpu())
    assert torch.isnan(z[1:3]).all() and torch.equal(z[[0, 3]], means.cpu()[[0, 0]])


def test_decode_rejects_bad_codes():
    means = torch.randn(5, 3)
    with pytest.raises(TypeError, match="codes must be an int64 or int32"):
        gk.gmvq_decode(torch.zeros(2), means)
    with pytest.raises(ValueError, match=r"codes must lie in \[-1, 5\).*got values from -2 to 1"):
        gk.gmvq_decode(torch.tensor([-2, 1]), means)
    with pytest.raises(ValueError, match=r"got values from 0 to 5"):
        gk.gmvq_decode(torch.tensor([0, 5]), means)
    assert gk.gmvq_decode(torch.tensor([[4, 0]], dtype=torch.int32), means).shape == (1, 2, 3)


def test_encode_validates_like_gmvq(device):
    x, means = torch.randn(4, 3, device=device), torch.randn(5, 3, device=device)
    with pytest.raises(ValueError, match=r"log_var must have shape \(K,\) == \(5,\)"):
        gk.gmvq_encode(x, means, torch.zeros(4, device=device))
    with pytest.raises(ValueError, match=r"means must have shape \(K, D\)"):
        gk.gmvq_encode(x, torch.randn(5, 4, device=device), torch.zeros(5, device=device))


@pytest.mark.parametrize("impl", ["triton", "torch", "reference"])
def test_module_codes_are_the_codes_used(impl, device):
    """Training with hard samples: quantized holds the means of the returned codes (as VectorQuantize's
    indices). encode / eval: the noise-free argmax, equal to gmvq_encode."""
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(8, 32, hard=True, tau=0.7, seed=5, impl=impl).to(device)
    x = torch.randn(6, 7, 8, device=device)
    quantized, codes, _ = vq(x)
    assert torch.equal(quantized, vq.codebook[codes].detach())
    noise_free = vq.encode(x)
    assert not torch.equal(codes, noise_free)  # the noise moves some samples at tau 0.7, K 32
    vq.eval()
    quantized, codes, _ = vq(x)
    assert torch.equal(codes, noise_free) and torch.equal(quantized, vq.decode(codes))


def test_encode_split_over_codes_matches_reference(monkeypatch, device):
    """Few row blocks split the codebook across programs (the GPU path at small N): the per-split
    winners are reduced by torch; exact ties across splits still go to the lowest code."""
    from gmvq_kernels import config

    monkeypatch.setattr(config, "sm_count", lambda dev: 4)  # 8 programs' worth: splits > 1 on any device
    x, means, log_var, log_prior = make_inputs(21, 200, 9, dtype=torch.float32, prior=True, device=device, seed=3)
    means[150] = means[5]
    log_var[150] = log_var[5]
    if log_prior is not None:
        log_prior[150] = log_prior[5]
    x[0] = means[5]
    got = gk.gmvq_encode(x, means, log_var, log_prior, impl="triton")
    want = gk.gmvq_reference(x.double(), means.double(), log_var.double(), log_prior.double()).codes
    assert got[0] == 5 and torch.equal(got.cpu(), want.cpu())


def test_encode_and_decode_trace_with_fullgraph(device):
    x, means, log_var, _ = make_inputs(19, 40, 6, device=device, seed=4)
    enc = torch.compile(lambda x, m, lv: gk.gmvq_decode(gk.gmvq_encode(x, m, lv), m), fullgraph=True,
                        backend="aot_eager")
    assert torch.equal(enc(x, means, log_var), means[gk.gmvq_encode(x, means, log_var)])


@pytest.mark.parametrize("hard", [False, True])
def test_training_codes_and_hard_sample_take_the_first_of_tied_codes(device, hard):
    """The forward's argmaxes (codes; in hard mode also the sample under explicit zero noise) on exact
    ties within a code tile (codes 5, 6) and across tiles (codes 2 and 20; the interpreter's tiles hold
    16 codes): the lowest code, as torch.argmax."""
    if not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    means = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
    means[6], means[20] = means[5], means[2]
    x = means[[5, 2, 20, 6]].clone()
    means, x = means.to(device), x.to(device)
    noise = torch.zeros(4, 24, device=device)
    out, sample = gk.functional.gmvq_with_sample(x, means, torch.zeros(24, device=device), hard=hard, noise=noise,
                                                 impl="triton")
    assert out.codes.tolist() == [5, 2, 2, 5]
    if hard:
        assert sample.tolist() == [5, 2, 2, 5]
