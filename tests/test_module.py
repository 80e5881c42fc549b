"""GaussianMixtureVQ (layouts, train/eval, tokenizer use, k-means init, state_dict) and the losses."""
import math

import pytest
import torch

import gmvq_kernels as gk
from gmvq_kernels.spec import DIFF_OUTPUTS


def test_layouts_and_outputs(device):
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(8, 32, seed=0, accept_image_fmap=True).to(device)
    img = torch.randn(2, 8, 3, 5, device=device)            # channel-first (B, D, H, W)
    out = vq(img)
    assert out.quantized.shape == img.shape and out.quantized.dtype == img.dtype
    assert out.codes.shape == (2, 3, 5) and out.codes.dtype == torch.int64
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    seq = torch.randn(2, 7, 8, device=device)               # channel-last (..., D), the default
    cl = gk.GaussianMixtureVQ(8, 32, seed=0, return_loss_breakdown=True).to(device)
    out = cl(seq)
    assert out.quantized.shape == seq.shape and out.codes.shape == (2, 7)
    assert set(out.terms) == {"latent_nll", "kl", "perplexity", "log_likelihood", "mixture_var", "entropy", "loss"}
    assert cl(torch.randn(2, 3, 5, 8, device=device)).codes.shape == (2, 3, 5)
    seq_cf = gk.GaussianMixtureVQ(8, 32, seed=0, channel_first=True).to(device)
    assert seq_cf(torch.randn(2, 8, 9, device=device)).codes.shape == (2, 9)  # (B, D, T)
    assert len(cl(seq, return_loss_breakdown=False)) == 3
    one = cl(torch.randn(8, device=device))                 # a single vector (D,)
    assert one.quantized.shape == (8,) and one.codes.shape == ()
    vol = gk.GaussianMixtureVQ(8, 32, seed=0, accept_3d_fmap=True).to(device)
    video = torch.randn(2, 8, 2, 3, 4, device=device)       # (B, D, T, H, W)
    out = vol(video)
    assert out.quantized.shape == video.shape and out.codes.shape == (2, 2, 3, 4)
    assert vol.get_codes_from_indices(out.codes).shape == video.shape


def test_layout_errors():
    """The layout is the module's, never guessed: an image map given to a channel-last module is an
    error that names the fix, even where its shape would fit either reading."""
    img = gk.GaussianMixtureVQ(8, 32, accept_image_fmap=True)
    with pytest.raises(ValueError, match=r"x must have D == 8 channels on axis 1 \(channel-first\); got shape \(2, 3, 4, 4\)"):
        img(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"x must be \(B, D, H, W\) with accept_image_fmap=True; got shape \(2, 8, 4\)"):
        img(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match=r"x must be \(B, D, T, H, W\) with accept_3d_fmap=True; got shape \(2, 8, 4, 4\)"):
        gk.GaussianMixtureVQ(8, 32, accept_3d_fmap=True)(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"pass accept_image_fmap=True or accept_3d_fmap=True, not both"):
        gk.GaussianMixtureVQ(8, 32, accept_image_fmap=True, accept_3d_fmap=True)
    vq = gk.GaussianMixtureVQ(8, 32)
    with pytest.raises(ValueError, match=r"x must have D == 8 on its last axis \(channel-last\); got shape \(4, 3\)"):
        vq(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 4, 4\); for D on axis 1 pass accept_image_fmap=True"):
        vq(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"a training call must quantize at least one latent vector; x has shape "
                                         r"\(0, 5, 8\)"):
        vq(torch.randn(0, 5, 8))
    with pytest.raises(ValueError, match=r"init_codebook needs at least one latent vector; x has shape \(0, 8\)"):
        vq.init_codebook(torch.randn(0, 8))
    square = gk.GaussianMixtureVQ(32, 16)
    assert square(torch.randn(1, 32, 32, 32)).codes.shape == (1, 32, 32)  # channel-last, as configured
    with pytest.raises(TypeError, match=r"does not take decay: GM-VQ has no EMA codebook"):
        gk.GaussianMixtureVQ(8, 32, decay=0.8)
    with pytest.raises(TypeError, match=r"does not take commitment_weight: .* use gamma="):
        gk.GaussianMixtureVQ(8, 32, commitment_weight=1.0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'"):
        gk.GaussianMixtureVQ(8, 32, colour=1)
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1; got 0"):
        gk.GaussianMixtureVQ(0, 4)
    with pytest.raises(ValueError, match=r"codebook_size must be an integer >= 1; got -2"):
        gk.GaussianMixtureVQ(4, -2)
    with pytest.raises(ValueError, match=r"tau must be a finite number in \[0.0001, 10000\]; got 0"):
        gk.GaussianMixtureVQ(4, 2, tau=0)


def test_eval_is_deterministic_and_matches_tokenizer_api(device):
    torch.manual_seed(1)
    vq = gk.GaussianMixtureVQ(6, 20, accept_image_fmap=True).to(device).eval()
    x = torch.randn(3, 6, 4, 4, device=device)
    a, b = vq(x), vq(x)
    assert torch.equal(a.quantized, b.quantized) and torch.equal(a.codes, b.codes)
    assert a.loss.item() == 0.0  # as VectorQuantize in eval
    assert vq.codebook is vq.means
    # in the module's layout, as VectorQuantize's (test_dropin.py compares the two)
    assert torch.equal(vq.get_codes_from_indices(a.codes), a.quantized)
    assert torch.equal(vq.get_output_from_indices(a.codes), a.quantized)
    codes = vq.encode(x)
    assert torch.equal(codes, a.codes)
    assert torch.equal(vq.decode(codes), a.quantized)
    # codes are argmax_k ℓ: nearest mean for equal variances and a uniform prior
    flat = x.movedim(1, -1).reshape(-1, 6)
    assert torch.equal(codes.reshape(-1), torch.cdist(flat, vq.means.detach()).argmin(1))


@pytest.mark.parametrize("heads", [{}, dict(heads=2, codebook_dim=4)], ids=["plain", "heads"])
def test_eval_on_the_kernels_takes_the_tokenizer_pass(heads, monkeypatch, device):
    """Eval mode where the op runs the kernels: the codes of ``gmvq_encode`` (one pass, nothing else
    computed; the training op is not called) and their means, loss 0; the breakdown's terms alone run the
    op. With impl="torch" the op's forward gives the codes (its C pass is the faster there)."""
    from gmvq_kernels import modules

    calls = []
    op = modules.gmvq_with_sample
    monkeypatch.setattr(modules, "gmvq_with_sample", lambda *a, **k: calls.append(k["impl"]) or op(*a, **k))
    g = torch.Generator().manual_seed(5)
    vq = gk.GaussianMixtureVQ(8, 40, learnable_prior=True, **heads).to(device).eval()
    x = torch.randn(3, 7, 8, generator=g).to(device)
    mask = torch.rand(3, 7, generator=g).to(device) < 0.7
    for kw in (dict(mask=mask), {}):
        out = vq(x, **kw)
        assert calls == [], calls
        assert torch.equal(out.codes, vq.encode(x, **kw)) and out.loss.item() == 0.0
        kept = out.codes >= 0 if vq.heads == 1 else (out.codes >= 0).all(-1)
        assert torch.equal(out.quantized[kept], vq.decode(out.codes)[kept]) and not out.quantized[~kept].any()
        terms = vq(x, return_loss_breakdown=True, **kw)
        assert calls == ["auto"] and torch.equal(terms.codes, out.codes) and torch.equal(terms.quantized, out.quantized)
        assert all(torch.isfinite(t) for t in terms.terms.values())
        calls.clear()
    if device == "cpu":
        vq.impl = "torch"
        assert torch.equal(vq(x).codes, out.codes) and calls == ["torch"]  # the unmasked call's codes


@pytest.mark.parametrize("kw", [dict(accept_image_fmap=True), dict(heads=2, codebook_dim=4, dim=6),
                                dict(dtype=torch.float64)], ids=["image", "heads", "fp64"])
def test_eval_without_vectors_returns_padding_and_nan_terms(kw):
    """Eval mode (and ``encode`` / ``decode``) on an empty batch, or with a mask that keeps nothing, gives
    every position as padding: quantized 0 (or the input), codes −1, loss 0; the terms are means over no
    vectors: NaN. Training refuses both (test_layout_errors, test_mask_layouts_and_errors)."""
    dtype = kw.pop("dtype", torch.float32)
    vq = gk.GaussianMixtureVQ(kw.pop("dim", 8), 16, return_loss_breakdown=True, **kw).to(dtype).eval()
    image = vq.accept_image_fmap
    empty = torch.randn(0, vq.dim, 3, 3, dtype=dtype) if image else torch.randn(0, 5, vq.dim, dtype=dtype)
    lead = (0, 3, 3) if image else (0, 5)
    out = vq(empty)
    assert out.quantized.shape == empty.shape and out.quantized.dtype == dtype
    assert out.codes.shape == lead + ((2,) if vq.heads > 1 else ()) and out.codes.dtype == torch.int64
    assert out.loss.item() == 0.0 and out.loss.dtype == torch.promote_types(dtype, torch.float32)
    assert sorted(out.terms) == sorted(("latent_nll", "kl", "perplexity", "log_likelihood", "mixture_var", "entropy",
                                        "loss")) and all(t.isnan() for t in out.terms.values())
    assert torch.equal(vq.encode(empty), out.codes) and vq.decode(out.codes).shape == empty.shape
    if not image:
        x = torch.randn(2, 5, vq.dim, dtype=dtype)
        none = torch.zeros(2, 5, dtype=torch.bool)
        out = vq(x, mask=none)
        assert not out.quantized.any() and (out.codes == -1).all() and out.loss.item() == 0.0
        vq.return_zeros_for_masked_padding = False
        assert torch.equal(vq(x, mask=none).quantized, x)


HEADS_CASES = [  # (dim, heads, codebook_dim): split only; projection only; both (codebook_dim = dim)
    (32, 4, 8), (32, 1, 8), (16, 2, None)]


@pytest.mark.parametrize("dim,heads,codebook_dim", HEADS_CASES)
def test_heads_and_codebook_dim_quantize_each_head_as_a_latent_vector(dim, heads, codebook_dim):
    """heads / codebook_dim (vector-quantize-pytorch's names): project_in where heads·codebook_dim ≠ dim,
    each head a row of its own for the op (one loss and q̄ over all of them), the rows' quantized values
    concatenated and projected back: the module's step equals that computed through ``gmvq`` by hand."""
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(dim, 16, heads=heads, codebook_dim=codebook_dim, seed=5, impl="torch",
                              return_loss_breakdown=True)
    cd = codebook_dim or dim
    assert vq.codebook.shape == (16, cd) and vq.has_projections == (heads * cd != dim)
    assert isinstance(vq.project_in, torch.nn.Linear) == vq.has_projections
    x = torch.randn(2, 5, dim)
    out = vq(x)
    rows = vq.project_in(x.reshape(-1, dim)).reshape(-1, cd)
    ref = gk.gmvq(rows, vq.means, vq.log_var, tau=vq.tau, hard=vq.hard, seed=5, impl="torch")
    want_loss = gk.albo_loss(ref, beta=vq.beta, gamma=vq.gamma, log_var=vq.log_var)
    want_q = vq.project_out(ref.quantized.reshape(10, heads * cd)).reshape(2, 5, dim)
    code_shape = (2, 5, heads) if heads > 1 else (2, 5)
    assert out.codes.shape == code_shape and torch.equal(out.codes, ref.codes.reshape(code_shape))
    torch.testing.assert_close(out.quantized, want_q, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want_loss, rtol=0, atol=0)
    out.loss.backward()
    for name, prm in vq.named_parameters():
        if name.startswith("project_out"):  # the loss is the quantizer's own: project_out is the decoder's
            continue
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0, name
    # eval: deterministic codes; encode, decode and vector-quantize-pytorch's names agree with forward
    vq.eval()
    ev = vq(x)
    assert torch.equal(vq.encode(x), ev.codes) and ev.codes.shape == code_shape
    assert torch.equal(vq.decode(ev.codes), ev.quantized)
    assert torch.equal(vq.get_output_from_indices(ev.codes), ev.quantized)
    means = vq.get_codes_from_indices(ev.codes)
    assert means.shape == (2, 5, heads * cd) and torch.equal(vq.project_out(means), ev.quantized)
    assert torch.equal(means.reshape(-1, cd), vq.means[ev.codes.reshape(-1)])


def test_heads_with_padding_image_maps_and_state_dict():
    torch.manual_seed(1)
    vq = gk.GaussianMixtureVQ(12, 8, heads=3, codebook_dim=6, seed=0, impl="torch").eval()
    x = torch.randn(2, 7, 12)
    lens = torch.tensor([7, 3])
    out = vq(x, lens=lens)
    assert out.codes.shape == (2, 7, 3) and (out.codes[1, 3:] == -1).all() and (out.codes[1, :3] >= 0).all()
    assert (out.quantized[1, 3:] == 0).all()
    alone = vq(x[1, :3])
    assert torch.equal(out.codes[1, :3], alone.codes)
    torch.testing.assert_close(out.quantized[1, :3], alone.quantized)  # project_out's rounding varies with the rows
    assert torch.equal(vq.encode(x, lens=lens), out.codes)
    assert vq.encode(x, mask=torch.zeros(2, 7, dtype=torch.bool)).shape == (2, 7, 3)
    img = gk.GaussianMixtureVQ(12, 8, heads=3, codebook_dim=6, accept_image_fmap=True, seed=0, impl="torch").eval()
    img.load_state_dict(vq.state_dict())
    fmap = torch.randn(2, 12, 3, 4)
    o = img(fmap)
    assert o.quantized.shape == fmap.shape and o.codes.shape == (2, 3, 4, 3)
    assert torch.equal(img.decode(o.codes), o.quantized)
    assert img.get_codes_from_indices(o.codes).shape == (2, 18, 3, 4)
    proj = gk.GaussianMixtureVQ(12, 8, codebook_dim=4, seed=0)
    again = gk.GaussianMixtureVQ(12, 8, codebook_dim=4, seed=1)
    again.load_state_dict(proj.state_dict())
    assert {"project_in.weight", "project_out.bias"} <= set(proj.state_dict())
    assert torch.equal(again.project_in.weight, proj.project_in.weight)
    assert "codebook_dim=4, heads=1" in repr(proj)
    with pytest.raises(ValueError, match=r"codes must have a last axis of heads == 3; got shape \(2, 7\)"):
        vq.decode(torch.zeros(2, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"heads must be <= 256 with separate_codebook_per_head=True .*; got 257"):
        gk.GaussianMixtureVQ(257, 8, heads=257, codebook_dim=1, separate_codebook_per_head=True)
    with pytest.raises(ValueError, match=r"heads must be an integer >= 1; got 0"):
        gk.GaussianMixtureVQ(12, 8, heads=0)
    with pytest.raises(ValueError, match=r"codebook_dim must be an integer >= 1; got 0"):
        gk.GaussianMixtureVQ(12, 8, codebook_dim=0)


@pytest.mark.parametrize("impl, hard, prior", [("torch", False, True), ("torch", True, False), ("triton", False, True),
                                              ("triton", True, True)])
def test_separate_codebooks_are_quantizers_of_their_own(impl, hard, prior, device):
    """separate_codebook_per_head: head h is a GaussianMixtureVQ of its own on the h-th piece of every vector,
    with means[h], log_var[h], log_prior[h] and seed + h·2⁵⁶ (the counter advancing once per step for all
    heads): quantized, codes, loss (the mean over the heads), the terms and every gradient bit for bit, over
    two steps; in eval mode the codes, quantized, encode and decode too."""
    torch.manual_seed(0)
    H, cd, K, seed = 3, 4, 16, 2**61 + 5
    kw = dict(impl=impl, hard=hard, learnable_prior=prior, return_loss_breakdown=True)
    vq = gk.GaussianMixtureVQ(H * cd, K, heads=H, codebook_dim=cd, separate_codebook_per_head=True, seed=seed,
                              **kw).to(device)
    assert vq.codebook.shape == (H, K, cd) and vq.log_var.shape == (H, K) and "separate_codebook_per_head=True" in repr(vq)
    with torch.no_grad():
        vq._log_var.uniform_(-2.0, 0.0)
        if prior:
            vq.log_prior.normal_()
    alone = [gk.GaussianMixtureVQ(cd, K, seed=(seed + (h << 56)) % 2**62, **kw).to(device) for h in range(H)]
    assert [m._seed_base - seed for m in alone] == [0, 2**56, 2**57]  # no wrap at these seeds
    for h, m in enumerate(alone):
        with torch.no_grad():
            for name in ("means", "_log_var") + (("log_prior",) if prior else ()):
                getattr(m, name).copy_(getattr(vq, name)[h])
    for step in range(2):
        x = torch.randn(2, 5, H * cd, device=device)
        out = vq(x)
        outs = [m(x[..., h * cd:(h + 1) * cd]) for h, m in enumerate(alone)]
        loss = torch.stack([o.loss for o in outs]).mean()
        assert torch.equal(out.codes, torch.stack([o.codes for o in outs], -1)), step
        assert torch.equal(out.quantized, torch.cat([o.quantized for o in outs], -1)), step
        assert torch.equal(out.loss, loss), step
        for name in out.terms:
            want = loss if name == "loss" else torch.stack([o.terms[name] for o in outs]).mean()
            assert torch.equal(out.terms[name], want), (step, name)
        vq.zero_grad()
        for m in alone:
            m.zero_grad()
        out.loss.backward()
        loss.backward()
        for h, m in enumerate(alone):
            for name, prm in m.named_parameters():
                assert torch.equal(getattr(vq, name).grad[h], prm.grad), (step, h, name)
    vq.eval()
    ev, evs = vq(x), [m.eval()(x[..., h * cd:(h + 1) * cd]) for h, m in enumerate(alone)]
    assert torch.equal(ev.codes, torch.stack([o.codes for o in evs], -1))
    assert torch.equal(ev.quantized, torch.cat([o.quantized for o in evs], -1))
    assert torch.equal(vq.encode(x), ev.codes) and torch.equal(vq.decode(ev.codes), ev.quantized)
    assert torch.equal(vq.get_codes_from_indices(ev.codes), ev.quantized)


def test_separate_codebooks_with_projections_kmeans_and_state_dict():
    """separate_codebook_per_head: k-means fits each head's codebook to that head's pieces; with
    project_in / project_out gradients reach both and every head's codebook; state_dict round-trips the
    (heads, K, ·) tensors; decode checks the heads axis; with heads=1 the codebook is (1, K, codebook_dim)
    and codes have no heads axis."""
    torch.manual_seed(3)
    vq = gk.GaussianMixtureVQ(8, 4, heads=2, codebook_dim=4, separate_codebook_per_head=True, kmeans_init=True,
                              per_component_variance=False, seed=0, impl="torch")
    assert vq._log_var.shape == (2, 1) and vq.log_var.shape == (2, 4)
    centres = torch.randn(2, 4, 4) * 5  # each head its own four centres
    x = centres[torch.arange(2), torch.randint(0, 4, (64, 2))] + 0.01 * torch.randn(64, 2, 4)
    vq(x.reshape(64, 8))
    for h in range(2):
        got = torch.cdist(centres[h], vq.means[h].detach()).min(1).values
        assert (got < 0.1).all(), (h, got)
    again = gk.GaussianMixtureVQ(8, 4, heads=2, codebook_dim=4, separate_codebook_per_head=True,
                                 per_component_variance=False, seed=1, impl="torch")
    again.load_state_dict(vq.state_dict())
    vq.eval()
    again.eval()
    codes = vq.encode(x.reshape(64, 8))
    assert codes.shape == (64, 2) and torch.equal(again.encode(x.reshape(64, 8)), codes)
    assert torch.equal(again.decode(codes), vq.decode(codes))
    with pytest.raises(ValueError, match=r"codes must have a last axis of heads == 2; got shape \(64,\)"):
        vq.decode(codes[:, 0])
    with pytest.raises(TypeError, match=r"codes must be an int64 or int32 torch.Tensor; got"):
        vq.decode(codes.float())
    proj = gk.GaussianMixtureVQ(6, 4, heads=2, codebook_dim=4, separate_codebook_per_head=True, seed=0, impl="torch")
    out = proj(torch.randn(5, 6))
    assert proj.has_projections and out.quantized.shape == (5, 6) and out.codes.shape == (5, 2)
    (out.loss + out.quantized.square().mean()).backward()
    assert proj.project_in.weight.grad.abs().sum() > 0 and proj.project_out.weight.grad.abs().sum() > 0
    assert (proj.means.grad.abs().sum((1, 2)) > 0).all()
    one = gk.GaussianMixtureVQ(4, 8, separate_codebook_per_head=True, impl="torch", seed=0)
    out = one(torch.randn(3, 4))
    assert one.codebook.shape == (1, 8, 4) and out.codes.shape == (3,)
    one.eval()
    ev = one(torch.randn(3, 4))
    assert torch.equal(one.decode(ev.codes), ev.quantized)


def test_kmeans_init_fits_the_heads():
    """k-means runs on what the codebook quantizes: each vector's heads, after project_in."""
    torch.manual_seed(2)
    vq = gk.GaussianMixtureVQ(8, 4, heads=2, codebook_dim=4, kmeans_init=True, seed=0, impl="torch")
    centres = torch.randn(4, 4) * 5
    x = (centres[torch.randint(0, 4, (64, 2))] + 0.01 * torch.randn(64, 2, 4)).reshape(64, 8)
    vq(x)
    got = torch.cdist(centres, vq.means.detach()).min(1).values
    assert (got < 0.1).all(), got


def test_training_gradients_reach_every_parameter(device):
    torch.manual_seed(2)
    vq = gk.GaussianMixtureVQ(5, 12, learnable_prior=True, hard=True, tau=0.5).to(device)
    x = torch.randn(40, 5, device=device, requires_grad=True)
    out = vq(x)
    (out.loss + out.quantized.square().mean()).backward()
    for name, p in [("x", x), ("means", vq.means), ("log_var", vq._log_var), ("log_prior", vq.log_prior)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_shared_variance_and_noise_injection(device):
    torch.manual_seed(3)
    vq = gk.GaussianMixtureVQ(4, 9, per_component_variance=False, init_log_var=-1.0,
                              noise_injection=True, seed=0).to(device)
    assert vq._log_var.shape == (1,) and torch.equal(vq.log_var, torch.full((9,), -1.0, device=device))
    x = torch.randn(30, 4, device=device)
    noisy = vq(x).quantized
    clean = gk.gmvq(x, vq.means, vq.log_var, seed=0).quantized
    assert not torch.allclose(noisy, clean)
    vq.noise_injection = False
    out = vq(x)
    out.loss.backward()
    assert vq._log_var.grad.shape == (1,)


def test_learned_variance_converges_to_maximum_likelihood(device):
    """K = 1: the loss in λ is γ·(mean d/(2σ²) + (D/2)·λ), minimised at σ² = mean(d)/D. Without the
    normaliser σ² would grow without bound."""
    torch.manual_seed(6)
    vq = gk.GaussianMixtureVQ(4, 1, init_log_var=0.0, gamma=1.0, impl="reference").to(device)
    vq.means.requires_grad_(False)
    x = 0.5 * torch.randn(200, 4, device=device)
    opt = torch.optim.SGD([vq._log_var], lr=0.3)  # convex in λ, curvature 2 at the optimum: converges fast
    for _ in range(60):
        opt.zero_grad()
        vq(x).loss.backward()
        opt.step()
    target = ((x - vq.means[0]) ** 2).sum(1).mean() / 4
    torch.testing.assert_close(vq.log_var.exp()[0], target, rtol=1e-3, atol=1e-4)


def test_kmeans_init_first_batch(device):
    torch.manual_seed(4)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]], device=device)
    x = (centers[torch.randint(0, 3, (300,))] + 0.1 * torch.randn(300, 2)).to(device)
    vq = gk.GaussianMixtureVQ(2, 3, kmeans_init=True, seed=0).to(device)
    assert not bool(vq.initted)
    vq(x)
    assert bool(vq.initted)
    found = vq.means.detach()
    assert torch.cdist(centers, found).min(1).values.max() < 0.5
    before = vq.means.detach().clone()
    vq(x)  # no re-initialisation
    assert torch.equal(before, vq.means.detach())


@pytest.mark.parametrize("impl,hard", [("auto", False), ("auto", True), ("triton", True)])
def test_mask_and_lens_quantize_only_the_kept_vectors(impl, hard, device):
    """A padding mask (or lengths), as vector-quantize-pytorch's: the kept vectors get what the module
    gives those rows alone (the same step: outputs, loss, terms and gradients bit for bit), so q̄ and the
    loss ignore the padding; there codes are −1 and quantized 0 (or the input), with no gradient to the
    codebook."""
    def module(**kw):
        vq = gk.GaussianMixtureVQ(4, 8, seed=5, hard=hard, impl=impl, learnable_prior=True,
                                  return_loss_breakdown=True, **kw).to(device)
        vq.load_state_dict(base.state_dict())
        return vq

    torch.manual_seed(0)
    base = gk.GaussianMixtureVQ(4, 8, seed=5, learnable_prior=True)
    lens = torch.tensor([5, 2, 4], device=device)
    mask = torch.arange(5, device=device) < lens[:, None]
    x = torch.randn(3, 5, 4, device=device, requires_grad=True)
    rows = x.detach()[mask].clone().requires_grad_(True)
    masked, alone = module(), module()
    got, want = masked(x, mask=mask), alone(rows)
    assert torch.equal(got.quantized[mask], want.quantized) and torch.equal(got.codes[mask], want.codes)
    assert torch.equal(got.loss, want.loss)
    assert all(torch.equal(got.terms[k], want.terms[k]) for k in want.terms)
    assert not got.quantized[~mask].any() and (got.codes[~mask] == -1).all()
    (got.quantized.square().sum() + got.loss).backward()
    (want.quantized.square().sum() + want.loss).backward()
    assert torch.equal(x.grad[mask], rows.grad) and not x.grad[~mask].any()
    for (name, p), q in zip(masked.named_parameters(), alone.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # lens: the same mask
    by_lens = module()(x, lens=lens)
    assert torch.equal(by_lens.quantized, got.quantized) and torch.equal(by_lens.loss, got.loss)
    # the input itself at the padding, and its gradient passes there
    x.grad = None
    ident = module(return_zeros_for_masked_padding=False)(x, mask=mask)
    assert torch.equal(ident.quantized[~mask], x.detach()[~mask]) and torch.equal(ident.codes, got.codes)
    ident.quantized.sum().backward()
    assert (x.grad[~mask] == 1).all()
    # eval: the kept vectors' noise-free codes
    masked.eval()
    ev = masked(x, mask=mask)
    assert torch.equal(ev.codes[mask], masked.encode(x)[mask]) and (ev.codes[~mask] == -1).all()
    assert torch.equal(ev.quantized[mask], masked.decode(ev.codes[mask])) and not ev.quantized[~mask].any()
    assert torch.equal(masked.encode(x, lens=lens), ev.codes)
    assert (masked.encode(x, mask=torch.zeros_like(mask)) == -1).all()  # all padding: nothing to encode


def test_mask_layouts_and_errors():
    img = gk.GaussianMixtureVQ(4, 8, seed=0, accept_image_fmap=True)
    keep = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    out = img(torch.randn(2, 4, 3, 5), mask=keep)  # (B, D, H, W): the mask is (B, H, W)
    assert out.quantized.shape == (2, 4, 3, 5) and torch.equal(out.codes < 0, ~keep)
    assert not out.quantized.movedim(1, -1)[~keep].any()
    vq = gk.GaussianMixtureVQ(4, 8, seed=0)
    x, lens = torch.randn(3, 5, 4), torch.tensor([5, 2, 4])
    with pytest.raises(ValueError, match=r"pass mask or lens, not both"):
        vq(x, mask=torch.ones(3, 5, dtype=torch.bool), lens=lens)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor; got torch.float32 tensor"):
        vq(x, mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"mask must have the shape of x without its channel axis, \(3, 5\); "
                                         r"got \(3, 4\)"):
        vq(x, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"lens must be an integer tensor; got torch.float32 tensor"):
        vq(x, lens=lens.float())
    with pytest.raises(ValueError, match=r"lens must have shape \(B,\) for latents of B sequences of T vectors "
                                         r"\(\(B, T\) without the channel axis: \(2, 3, 5\)\); got shape \(2,\)"):
        vq(torch.randn(2, 3, 5, 4), lens=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"a training call must quantize at least one latent vector; mask \(or lens\) "
                                         r"keeps none"):
        vq(x, lens=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"return_zeros_for_masked_padding must be a bool; got 1"):
        gk.GaussianMixtureVQ(4, 8, return_zeros_for_masked_padding=1)


def test_state_dict_round_trip_and_repr():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(6))
    vq = gk.GaussianMixtureVQ(6, 10, learnable_prior=True, kmeans_init=True, impl="reference", seed=3)
    vq(x), vq(x)  # k-means init, two noise seeds used
    vq2 = gk.GaussianMixtureVQ(6, 10, learnable_prior=True, kmeans_init=True, impl="reference", seed=9)
    vq2.load_state_dict(vq.state_dict())
    for (k, a), (_, b) in zip(vq.state_dict().items(), vq2.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(vq.state_dict()["_extra_state"], torch.tensor(5))
    # the loaded module continues where the saved one stopped: no k-means again, the same next noise
    assert not vq2._kmeans_pending
    assert torch.equal(vq2(x).quantized, vq(x).quantized)
    assert "codebook_size=10" in repr(vq) and "learnable_prior=True" in repr(vq)


@pytest.mark.parametrize("device_seed", [False, True])
def test_state_dict_holds_tensors_alone_and_loads_the_old_counter(device_seed, tmp_path):
    """Every state_dict value is a tensor, the step counter too (0-dim int64 on the CPU): formats of
    tensors alone (safetensors, Hugging Face's default) refused the {"next_seed": int} it was until
    2026-12-05. A checkpoint that holds that dict still loads, and torch.load(weights_only=True) reads
    the new one."""
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(6))
    vq = gk.GaussianMixtureVQ(6, 10, learnable_prior=True, seed=3, impl="reference", device_seed=device_seed)
    vq(x), vq(x)
    state = vq.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values()), {k: type(v) for k, v in state.items()}
    counter = state["_extra_state"]
    assert counter.dtype == torch.int64 and counter.dim() == 0 and counter.device.type == "cpu" and int(counter) == 5
    torch.save(state, tmp_path / "vq.pt")
    want = vq(x).quantized  # the next step's, drawn with seed 3 + 2
    for saved in (torch.load(tmp_path / "vq.pt", weights_only=True), {**state, "_extra_state": {"next_seed": 5}}):
        again = gk.GaussianMixtureVQ(6, 10, learnable_prior=True, seed=9, impl="reference", device_seed=device_seed)
        again.load_state_dict(saved)
        assert int(again._next_seed) == 5
        assert torch.equal(again(x).quantized, want)


META_CASES = [dict(), dict(device_seed=True), dict(learnable_prior=True, per_component_variance=False),
              dict(heads=2, codebook_dim=4, kmeans_init=True, learn_variance=False)]


@pytest.mark.parametrize("kw", META_CASES, ids=["plain", "device_seed", "prior-shared-var", "heads-kmeans-fixed-var"])
def test_module_built_on_meta_is_initialised_by_reset_parameters_or_a_loaded_state(kw):
    """Built under ``torch.device("meta")`` (how large models are made without memory), then given memory
    by ``to_empty``, whose values are garbage: ``reset_parameters`` sets every parameter, buffer and the
    step counter as the constructor does (the same draws from torch's generator), and a state_dict loaded
    with assign=True gives the saved module's next step. The counter is held on the CPU, never on the
    context's device (a meta counter failed the first step)."""
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    want = gk.GaussianMixtureVQ(16, 24, seed=7, impl="reference", **kw)
    with torch.device("meta"):
        vq = gk.GaussianMixtureVQ(16, 24, seed=7, impl="reference", **kw)
    assert vq.means.is_meta and vq._next_seed.device.type == ("meta" if kw.get("device_seed") else "cpu")
    vq.to_empty(device="cpu")
    with torch.no_grad():  # garbage where to_empty may have left zeros
        for t in [*vq.parameters(), *vq.buffers()]:
            t.fill_(True if t.dtype == torch.bool else 123)
    vq._kmeans_pending = not vq._kmeans_pending
    torch.manual_seed(0)
    vq.reset_parameters()
    saved = want.state_dict()
    for name, value in vq.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert vq._kmeans_pending == want._kmeans_pending
    out = want(x)
    assert torch.equal(vq(x).quantized, out.quantized)  # k-means on the same batch, then the same noise

    with torch.device("meta"):
        loaded = gk.GaussianMixtureVQ(16, 24, seed=1, impl="reference", **kw)
    loaded.load_state_dict(want.state_dict(), assign=True)
    assert not loaded._kmeans_pending
    assert torch.equal(loaded(x).quantized, want(x).quantized)


@pytest.mark.parametrize("hard", [False, True])
def test_device_seed_counter_moves_with_the_module_and_draws_seed_plus_t(monkeypatch, hard, device):
    """device_seed=True: the step counter is a buffer that moves with the module and stays out of the
    state_dict's tensors (extra_state carries it), and each training step hands the kernels a seed in
    device memory that draws the noise of seed + t, as the CPU counter does: outputs and gradients bit
    for bit over three steps (the counter is advanced before each backward runs, which takes the seed its
    forward saw). A CPU tensor stands in for the CUDA one the kernels read as they run
    (noise.seed_on_device), under the interpreter."""
    from gmvq_kernels import noise

    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(1)).to(device)

    def steps(vq):
        got = []
        for _ in range(3):
            out = vq(x)
            got += [out.quantized, out.codes, out.loss]
            (out.loss + out.quantized.square().mean()).backward()
            got += [p.grad.clone() for p in vq.parameters()]
            vq.zero_grad()
        return got, int(vq._next_seed)

    torch.manual_seed(0)
    plain = gk.GaussianMixtureVQ(5, 12, seed=2**61 + 5, hard=hard, tau=0.5, impl="triton").to(device)
    torch.manual_seed(0)
    on_device = gk.GaussianMixtureVQ(5, 12, seed=2**61 + 5, hard=hard, tau=0.5, impl="triton",
                                     device_seed=True).to(device)
    assert plain._next_seed.device.type == "cpu" and on_device._next_seed.device.type == torch.device(device).type
    assert "_next_seed" not in on_device.state_dict() and "device_seed=True" in repr(on_device)
    want, want_next = steps(plain)
    if torch.device(device).type == "cpu":
        monkeypatch.setattr(noise, "seed_on_device", lambda s: isinstance(s, torch.Tensor))
        passed = []  # the seeds the module hands gmvq: tensors, read by the kernels
        real = gk.modules.gmvq_with_sample
        monkeypatch.setattr(gk.modules, "gmvq_with_sample",
                            lambda *a, **kw: passed.append(kw["seed"]) or real(*a, **kw))
    got, got_next = steps(on_device)
    assert got_next == want_next == 2**61 + 5 + 3
    for i, (a, b) in enumerate(zip(want, got)):
        assert torch.equal(a, b), i
    if torch.device(device).type == "cpu":
        assert [int(s) for s in passed] == [2**61 + 5 + t for t in range(3)]
        assert all(isinstance(s, torch.Tensor) and noise.seed_on_device(s) for s in passed)
    counter = on_device.state_dict()["_extra_state"]
    assert counter.device.type == "cpu" and torch.equal(counter, torch.tensor(2**61 + 5 + 3))
    assert on_device.to("meta")._next_seed.device.type == "meta"


def test_losses_match_definitions():
    torch.manual_seed(5)
    x, m, lv, lp = (torch.randn(25, 3).double(), torch.randn(7, 3).double(), torch.randn(7).double() * 0.2,
                    torch.randn(7).double())
    out = gk.gmvq_reference(x, m, lv, lp, seed=2)
    log_pi = torch.log_softmax(lp, 0)
    kl = (out.agg_posterior * (out.agg_posterior.log() - log_pi)).sum()
    torch.testing.assert_close(gk.kl_to_prior(out.agg_posterior, lp), kl)
    torch.testing.assert_close(gk.albo_loss(out, lp, beta=2.0, gamma=0.5), 0.5 * out.latent_nll.mean() + 2.0 * kl)
    # ELBO: mean over rows of KL(q_n ‖ π), from dense q
    a, b, _ = gk.spec.component_terms(lv, log_pi, 3)
    q = torch.softmax(b - gk.reference.sq_distances(x, m) * a, 1)
    per_sample = (q * (q.log() - log_pi)).sum(1).mean()
    torch.testing.assert_close(gk.elbo_loss(out, lp, gamma=0.0), per_sample)
    torch.testing.assert_close(gk.perplexity(out.agg_posterior), torch.exp(-(out.agg_posterior * out.agg_posterior.log()).sum()))
    # the default weights (β = γ = 1) and no log_var: the same bits as the unweighted sum
    assert torch.equal(gk.albo_loss(out, lp), out.latent_nll.mean() + gk.kl_to_prior(out.agg_posterior, lp))
    assert torch.equal(gk.albo_loss(out, lp, log_var=lv), out.latent_nll.mean()
                       + gk.losses.variance_normaliser(out, lv) + gk.kl_to_prior(out.agg_posterior, lp))
    hist, ppl, used = gk.codebook_usage(torch.tensor([0, 0, 1, 3]), 5)
    assert hist.tolist() == [2, 1, 0, 1, 0] and used == 3
    assert math.isclose(ppl, math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))


@pytest.mark.parametrize("loss", [gk.albo_loss, gk.elbo_loss])
def test_losses_skip_identity_ops(loss):
    """With β = γ = 1 and no log_var the losses multiply by no 1 and add no 0, forward or backward: on a
    GPU each op is a launch and host time in an eager step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("new_zeros", "zeros") or (name == "mul" and 1 in [a for a in args if isinstance(a, float)]):
                found.append(func)
            return func(*args, **(kwargs or {}))

    x, m = torch.randn(9, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    out = gk.gmvq(x, m, torch.zeros(4), impl="reference")
    found = []
    with Ops():
        loss(out).backward()
    assert found == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_kl_and_perplexity_gradients_where_a_code_is_empty(dtype):
    """KL(q̄ ‖ π) and exp(H) keep their values (0·log 0 = 0) and the gradient log q̄ + 1 − log π where
    q̄ > 0, and have a finite gradient where q̄ = 0 (torch.xlogy's is −inf there: losses.xlogx)."""
    lp = torch.randn(4, generator=torch.Generator().manual_seed(3), dtype=dtype)
    q = torch.tensor([0.6, 0.0, 0.4, 0.0], dtype=dtype, requires_grad=True)
    kl = gk.kl_to_prior(q, lp)
    kl.backward()
    log_pi = torch.log_softmax(lp, 0)
    torch.testing.assert_close(kl, (torch.xlogy(q, q) - q * log_pi).sum())
    live = q.detach() > 0
    torch.testing.assert_close(q.grad[live], (q.detach().log() + 1 - log_pi)[live])
    assert torch.isfinite(q.grad).all()
    q.grad = None
    ppl = gk.perplexity(q)
    ppl.backward()
    torch.testing.assert_close(ppl, torch.exp(-torch.xlogy(q, q).sum()))
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("objective", ["albo", "elbo"])
def test_module_step_is_finite_with_codes_out_of_reach(objective):
    """Found by tests/random_training.py: at σ² = e⁻⁶ on data at scale 30 most codes lie out of every
    row's reach (q̄_k exactly 0 in fp32), and the default objective's gradients were NaN from the first
    step on, with a finite loss (losses.xlogx; the ELBO takes no log of q̄). Every parameter's gradient
    is finite."""
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(8, 32, init_log_var=-6.0, learnable_prior=True, objective=objective, impl="torch",
                              seed=0)
    x = torch.randn(48, 8) * 30.0
    with torch.no_grad():  # the premise
        assert (gk.gmvq(x, vq.means, vq.log_var, vq.log_prior, impl="torch").agg_posterior == 0).any()
    _, _, loss = vq(x)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in vq.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_module_objective_elbo_and_albo():
    torch.manual_seed(8)
    x = torch.randn(30, 4)
    losses = {}
    for objective in ("albo", "elbo"):
        vq = gk.GaussianMixtureVQ(4, 6, objective=objective, learn_variance=False, impl="reference", seed=1)
        vq.means.data = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        losses[objective] = vq(x).loss
        out = gk.gmvq(x, vq.means, vq.log_var, impl="reference", seed=1)  # step 0 of seed=1
        want = (gk.albo_loss if objective == "albo" else gk.elbo_loss)(out, beta=vq.beta, gamma=vq.gamma)
        torch.testing.assert_close(losses[objective], want)
    assert not torch.allclose(losses["albo"], losses["elbo"])
    with pytest.raises(ValueError, match=r"objective must be 'albo' or 'elbo'; got 'vq'"):
        gk.GaussianMixtureVQ(4, 6, objective="vq")


def test_training_step_t_uses_seed_plus_t():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(4))
    vq = gk.GaussianMixtureVQ(3, 5, impl="reference", seed=2**40)
    with torch.no_grad():
        for t in range(3):
            want = gk.gmvq(x, vq.means, vq.log_var, seed=2**40 + t, impl="reference").quantized
            assert torch.equal(vq(x).quantized, want)
        vq.eval()
        vq(x)  # eval draws no training noise: the sequence does not advance
    assert int(vq._next_seed) == 2**40 + 3
    torch.manual_seed(0)
    a = gk.GaussianMixtureVQ(3, 5)
    torch.manual_seed(0)
    assert int(gk.GaussianMixtureVQ(3, 5)._next_seed) == int(a._next_seed)  # seed=None: torch's RNG
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*62\); got -1"):
        gk.GaussianMixtureVQ(3, 5, seed=-1)


def test_tau_schedule():
    assert gk.tau_schedule(0, start=1.0, end=0.25, steps=100) == 1.0
    assert math.isclose(gk.tau_schedule(50, start=1.0, end=0.25, steps=100), 0.5)
    assert gk.tau_schedule(10_000, start=1.0, end=0.25, steps=100) == 0.25
    with pytest.raises(ValueError, match="tau_schedule needs start > 0"):
        gk.tau_schedule(1, start=0.0)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["reference", "torch", "triton"])
def test_autocast(impl, amp, device):
    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    torch.manual_seed(7)
    x = torch.randn(20, 8, device=device, requires_grad=True)
    m = torch.randn(30, 8, device=device, requires_grad=True)
    lv = torch.zeros(30, device=device, requires_grad=True)
    with torch.autocast(device_type=device, dtype=amp):
        out = gk.gmvq(x, m, lv, impl=impl)
        loss = gk.albo_loss(out) + out.quantized.float().square().mean()
    assert out.quantized.dtype == amp
    for name in ("log_likelihood", "agg_posterior", "latent_nll", "mixture_var", "entropy"):
        assert getattr(out, name).dtype == torch.float32, name
    loss.backward()
    for t in (x, m, lv):
        assert t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()
    # the same numbers as feeding half inputs directly
    ref = gk.gmvq(x.detach().to(amp), m.detach().to(amp), lv.detach(), impl=impl)
    torch.testing.assert_close(out.log_likelihood, ref.log_likelihood)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["torch-c", "torch-ops", "triton"])
def test_backward_inside_autocast_matches_a_backward_after_it(impl, amp, hard, device, monkeypatch):
    """Many training loops call backward inside their autocast region, where autocast stays on for the
    backward's ops. The op's backward keeps its own precision there: every gradient bit for bit as a
    backward after the region. Before, impl="torch"'s backward formed a half product and handed it to its
    C passes, which wrote fp64 past it (heap corruption: the process aborted), or failed on a dtype
    mismatch without them ("torch-ops")."""
    from gmvq_kernels import cpu_rows

    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    if impl.startswith("torch"):
        if device != "cpu":
            pytest.skip("impl='torch' is the CPU path")
        monkeypatch.setenv(cpu_rows.C_ROWS_ENV, "1" if impl == "torch-c" else "0")
        if impl == "torch-c" and cpu_rows.rows_library() is None:
            pytest.skip("no C compiler: the C row passes cannot be built here")
    g = torch.Generator().manual_seed(7)
    inputs = [torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g), 0.3 * torch.randn(30, generator=g),
              torch.randn(30, generator=g)]
    weights = {name: torch.randn(30 if name == "agg_posterior" else 20, generator=g) for name in DIFF_OUTPUTS
               if name != "quantized"}
    grads = []
    for inside in (True, False):
        leaves = [t.to(device).requires_grad_() for t in inputs]
        with torch.autocast(device_type=device, dtype=amp):
            out = gk.gmvq(*leaves, hard=hard, seed=3, impl=impl.split("-")[0])
            loss = out.quantized.float().square().mean() + sum(
                (getattr(out, name) * w.to(device)).sum() for name, w in weights.items())
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([t.grad for t in leaves])
    for name, inside, after in zip(("x", "means", "log_var", "log_prior"), *grads):
        assert inside.dtype == after.dtype == torch.float32 and torch.isfinite(after).all(), name
        assert torch.equal(inside, after), name


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("layout", [dict(heads=2), dict(codebook_dim=4), dict(heads=2, codebook_dim=4)],
                         ids=["heads", "codebook_dim", "both"])
def test_module_with_projections_trains_under_autocast(impl, layout, device):
    """With heads or codebook_dim the module's project_in (a Linear) hands gmvq rows in the autocast
    dtype beside its fp32 means; both take that dtype, as a matmul's inputs (before, gmvq refused the
    pair: "means must have the dtype of x"). The codes are encode's under the same autocast."""
    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    if impl == "torch" and device != "cpu":
        pytest.skip("impl='torch' is the CPU path")
    vq = gk.GaussianMixtureVQ(16, 32, seed=4, impl=impl, **layout).to(device)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2)).to(device).requires_grad_()
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        quantized, codes, loss = vq(x)
        (loss + quantized.float().square().mean()).backward()
        encoded = vq.encode(x.detach())
    assert quantized.dtype == torch.float32 and quantized.shape == x.shape and torch.isfinite(loss)
    assert torch.equal(codes, encoded)
    for name, p in [("x", x), *vq.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_autocast_takes_fp32_and_half_inputs_and_leaves_fp64():
    """gmvq under autocast casts x and means as a matmul's inputs: fp32 and half to the autocast dtype
    (so a bf16 x beside fp32 means is one call), fp64 not at all, as torch's autocast; an fp64 x beside
    fp32 means is still refused."""
    g = torch.Generator().manual_seed(3)
    x, means, lv = torch.randn(9, 5, generator=g), torch.randn(6, 5, generator=g), torch.zeros(6)
    plain = gk.gmvq(x.bfloat16(), means.bfloat16(), lv, impl="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gk.gmvq(x.bfloat16(), means, lv, impl="torch")
        wide = gk.gmvq(x.double(), means.double(), lv.double(), impl="torch")
        codes = gk.gmvq_encode(x, means.bfloat16(), lv, impl="torch")
        with pytest.raises(TypeError, match=r"means must have the dtype of x \(torch.float64\); got torch.float32"):
            gk.gmvq(x.double(), means, lv, impl="torch")
    assert mixed.quantized.dtype == torch.bfloat16 and torch.equal(mixed.quantized, plain.quantized)
    assert torch.equal(codes, plain.codes)
    want = gk.gmvq(x.double(), means.double(), lv.double(), impl="torch")
    assert wide.quantized.dtype == torch.float64 and torch.equal(wide.quantized, want.quantized)


def test_module_under_autocast_returns_the_input_dtype():
    """Under autocast the module's distance dots run in bf16 (as gk.gmvq's), but ``quantized`` comes back
    in x's dtype, as outside autocast; the loss stays fp32 and x's gradient is finite."""
    vq = gk.GaussianMixtureVQ(8, 16, seed=3, impl="torch")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantized, codes, loss = vq(x)
        assert quantized.dtype == dtype and quantized.shape == x.shape and loss.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = vq(x.detach(), return_loss_breakdown=True).terms
        with torch.no_grad():  # the dots in bf16: x and the means rounded, as autocast rounds them
            plain = gk.gmvq(x.reshape(-1, 8).bfloat16(), vq.means.bfloat16(), vq.log_var, impl="torch")
        torch.testing.assert_close(terms["log_likelihood"], plain.log_likelihood.mean())
        (loss + quantized.float().square().mean()).backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("objective", ["albo", "elbo"])
def test_module_loss_is_the_functional_loss_with_log_var(objective):
    """A functional-API user who learns log_var gets the module's objective: albo_loss/elbo_loss with
    log_var= add the same (D/2)·Σ q̄ λ normaliser, so loss and every gradient agree."""
    vq = gk.GaussianMixtureVQ(6, 11, seed=4, objective=objective, beta=1.5, gamma=0.7, impl="reference")
    with torch.no_grad():
        vq._log_var.normal_(0.0, 0.3)  # λ ≠ 0: the normaliser has a value, not only a gradient
    x = torch.randn(13, 6)
    loss_mod = vq(x).loss
    grads_mod = torch.autograd.grad(loss_mod, (vq.means, vq._log_var))
    seed = int(vq._next_seed) - 1  # the step the module just drew its noise with
    out = gk.gmvq(x, vq.means, vq.log_var, tau=vq.tau, seed=seed, impl="reference")
    fn = gk.albo_loss if objective == "albo" else gk.elbo_loss
    loss_fn = fn(out, beta=1.5, gamma=0.7, log_var=vq.log_var)
    grads_fn = torch.autograd.grad(loss_fn, (vq.means, vq._log_var))
    torch.testing.assert_close(loss_mod, loss_fn, rtol=0, atol=0)
    for a, b in zip(grads_mod, grads_fn):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # without log_var the normaliser is missing: the losses differ (the test can fail)
    assert not torch.equal(fn(out, beta=1.5, gamma=0.7), loss_mod)


RECIPE = r"""
import json, torch
import gmvq_kernels as gk
from sklearn.datasets import load_digits

torch.manual_seed(0)
images = torch.from_numpy(load_digits().images.astype("float32") / 16.0)[:, None]
images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
train, test = images[360:], images[:360]
enc = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 2, 1))
dec = torch.nn.Sequential(torch.nn.ConvTranspose2d(32, 32, 4, 2, 1), torch.nn.ReLU(),
                          torch.nn.ConvTranspose2d(32, 1, 4, 2, 1))
vq = gk.GaussianMixtureVQ(dim=32, codebook_size=512, accept_image_fmap=True, seed=0)
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *vq.parameters()], lr=1e-3)
steps = 300
for step in range(steps):
    vq.tau = gk.tau_schedule(step, start=1.0, end=0.3, steps=steps)
    x = train[torch.randint(0, len(train), (128,))]
    quantized, codes, vq_loss = vq(enc(x))
    loss = (dec(quantized) - x).square().mean() + vq_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
vq.eval()
with torch.no_grad():
    quantized, codes, _ = vq(enc(test))
    mse = float((dec(quantized) - test).square().mean())
print(json.dumps(dict(mse=mse, mean_image_mse=float((test - train.mean(0)).square().mean()),
                      used=gk.codebook_usage(codes, 512)[2])))
"""


def test_defaults_do_not_collapse_in_the_plain_recipe():
    """The README recipe with the module's defaults: a conv autoencoder on scikit-learn's digits, K = 512,
    D = 32, batch 128, Adam 1e-3, 300 steps, loss = pixel-mean MSE + vq_loss, no other tuning. With the
    first defaults (γ = β = 1, σ² = 1, hard) this used 1 code of 512 at a test MSE of 0.074 (the mean
    image); today's: 0.019–0.021 with 241–275 codes; vector-quantize-pytorch's VectorQuantize in the
    same loop: 0.022–0.023, 114–115 codes. Runs as a CPU user runs it (impl="auto", i.e. "torch", and
    NumPy noise, a subprocess without the interpreter): seconds."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", RECIPE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["used"] >= 128, res
    assert res["mse"] < 0.5 * res["mean_image_mse"], res


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_activation_checkpointing_recomputes_each_call_with_its_seed(impl, reentrant, device):
    """torch.utils.checkpoint runs a checkpointed call again in the backward with torch's RNG restored,
    not the module's seed counter: the rerun must draw the noise of the call it repeats. Two checkpointed
    calls in a step, a backward through both and a second one of the same graph (retain_graph): the
    gradients equal those without checkpointing, and the counter advances once per call (a new seed in
    the rerun gave gradients 0.08–0.11 off). A reentrant checkpoint adds the parameters' gradients in
    another order: within an ulp there, bitwise equal otherwise."""
    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    from torch.utils.checkpoint import checkpoint

    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 5, 6, generator=gen).to(device) for _ in range(2)]

    def step(checkpointed):
        torch.manual_seed(0)
        enc = torch.nn.Linear(6, 8).to(device)
        vq = gk.GaussianMixtureVQ(8, 16, seed=5, impl=impl).to(device)
        call = (lambda h: checkpoint(vq, h, use_reentrant=reentrant)) if checkpointed else vq
        (q1, _, l1), (q2, _, l2) = call(enc(xs[0])), call(enc(xs[1]))
        loss = l1 + l2 + q1.square().mean() + (q2 * xs[1][..., :1]).mean()
        loss.backward(retain_graph=True)
        loss.backward()
        return [p.grad for p in (*enc.parameters(), *vq.parameters())], int(vq._next_seed)

    plain, seed_plain = step(False)
    ckpt, seed_ckpt = step(True)
    ulps = dict(rtol=2.5e-7, atol=1e-8) if reentrant else dict(rtol=0, atol=0)
    for want, got in zip(plain, ckpt):
        torch.testing.assert_close(got, want, **ulps)
    assert seed_plain == seed_ckpt == 7


def test_activation_checkpointing_without_the_calls_seed_is_an_error():
    from torch.utils.checkpoint import checkpoint

    vq = gk.GaussianMixtureVQ(4, 8, seed=1, impl="torch")
    q, _, loss = checkpoint(vq, torch.randn(6, 4, requires_grad=True), use_reentrant=False)
    vq._recompute_seeds.clear()  # as if the call had not been kept (e.g. evicted)
    with pytest.raises(RuntimeError, match=r"a training call ran during a backward pass .* has 0 seed\(s\)"):
        (loss + q.sum()).backward()


@pytest.mark.parametrize("reentrant", [False, True])
def test_forward_seed_draws_that_seed_and_keeps_the_counter(reentrant):
    """``vq(x, seed=s)``: the noise of seed s (as ``gmvq``'s), the step counter left where it was; under
    checkpointing the rerun gets the same argument, so micro-batches whose backward passes come in
    another order than their forwards (a pipeline's 1F1B schedule, which the counter's latest-first
    order gets wrong) get the gradients of the same schedule without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    vq = gk.GaussianMixtureVQ(6, 16, seed=5, impl="torch")
    want = gk.gmvq(x.reshape(-1, 6), vq.means, vq.log_var, seed=123, impl="reference").quantized
    torch.testing.assert_close(vq(x, seed=123).quantized.reshape(-1, 6), want)
    assert int(vq._next_seed) == 5
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*62\) or a 0-dim int64 "
                                         r"tensor; got -1"):
        vq(x, seed=-1)

    def schedule(checkpointed):
        torch.manual_seed(0)
        enc = torch.nn.Linear(6, 6)
        vq = gk.GaussianMixtureVQ(6, 16, seed=5, impl="torch")
        # (a reentrant checkpoint takes no keyword arguments: the seed goes in through a closure)
        call = ((lambda h, s: checkpoint(lambda h: vq(h, seed=s), h, use_reentrant=reentrant)) if checkpointed
                else (lambda h, s: vq(h, seed=s)))
        losses = [(lambda q, _, loss: loss + q.square().mean())(*call(enc(x[i]), 100 + i)) for i in range(2)]
        for loss in losses:  # the first micro-batch's backward first
            loss.backward()
        return [p.grad for p in (*enc.parameters(), *vq.parameters())], int(vq._next_seed)

    (plain, plain_seed), (ckpt, ckpt_seed) = schedule(False), schedule(True)
    ulps = dict(rtol=2.5e-7, atol=1e-8) if reentrant else dict(rtol=0, atol=0)
    for a, b in zip(ckpt, plain):
        torch.testing.assert_close(a, b, **ulps)
    assert plain_seed == ckpt_seed == 5
