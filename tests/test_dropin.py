"""GaussianMixtureVQ as a drop-in for vector-quantize-pytorch's VectorQuantize: the same training loop
runs with either (skipped when vector-quantize-pytorch is absent: pip install -e ".[compare]").

Runs in a subprocess without TRITON_INTERPRET, as a CPU user runs it (impl="auto" takes the "torch" path
and the NumPy noise; under the interpreter the noise alone would take minutes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vector_quantize_pytorch")
ROOT = Path(__file__).resolve().parents[1]

LOOP = r'''
import json, torch
from torch import nn
import gmvq_kernels as gk
from vector_quantize_pytorch import VectorQuantize

def train(vq, steps=120, seed=0):
    """A small conv autoencoder on random 8×8 patterns; the loop is written against VectorQuantize."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 2, 2))
    dec = nn.Sequential(nn.ConvTranspose2d(16, 16, 2, 2), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *vq.parameters()], lr=3e-3)
    data = torch.rand(256, 3, 8, 8)
    for step in range(steps):
        x = data[torch.randint(0, 256, (64,))]
        quantized, indices, loss = vq(enc(x))
        total = (dec(quantized) - x).square().mean() + loss.sum()
        opt.zero_grad()
        total.backward()
        opt.step()
    vq.eval()
    with torch.no_grad():
        z = enc(data)
        a, b = vq(z), vq(z)
    return z, a, b

res = {}
for name, vq in [("vq", VectorQuantize(dim=16, codebook_size=64, accept_image_fmap=True)),
                 ("gmvq", gk.GaussianMixtureVQ(dim=16, codebook_size=64, hard=True, accept_image_fmap=True,
                                               seed=0))]:
    z, a, b = train(vq)
    res[name] = dict(shapes=[list(t.shape) for t in a[:2]], dtypes=[str(t.dtype) for t in a[:2]],
                     loss=float(a[2].sum()), deterministic=bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])),
                     used=int((torch.bincount(a[1].reshape(-1), minlength=64) > 0).sum()),
                     # the tokens' vectors in the layout of the quantized output (VectorQuantize's adds x − x)
                     from_indices=[bool(torch.allclose(f(a[1]), a[0], atol=1e-6))
                                   for f in (vq.get_codes_from_indices, vq.get_output_from_indices)])
    if name == "gmvq":
        res[name]["codebook_rows"] = bool(torch.equal(vq.get_codes_from_indices(a[1]), a[0]))
        res[name]["codebook_is_means"] = vq.codebook is vq.means
print(json.dumps(res))
'''


def test_same_loop_runs_with_vector_quantize_and_gmvq():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ref, ours = res["vq"], res["gmvq"]
    assert ours["shapes"] == ref["shapes"] == [[256, 16, 4, 4], [256, 4, 4]]
    assert ours["dtypes"] == ref["dtypes"] == ["torch.float32", "torch.int64"]
    assert ours["loss"] == 0.0  # eval: no loss, as VectorQuantize
    assert ours["from_indices"] == ref["from_indices"] == [True, True]
    assert ours["deterministic"] and ours["codebook_rows"] and ours["codebook_is_means"]
    # healthy codebook usage with the module's defaults and the loss added unscaled, as the loop adds
    # VectorQuantize's (the former defaults, γ = β = 1 and σ² = 1, collapsed to 1–3 codes here)
    assert ours["used"] >= 16, res


MASKED = r'''
import json, torch
import gmvq_kernels as gk
from vector_quantize_pytorch import VectorQuantize

torch.manual_seed(0)
x = torch.randn(3, 6, 8, requires_grad=True)  # (B, T, D) sequences, padded at the end
lens = torch.tensor([6, 2, 4])
mask = torch.arange(6) < lens[:, None]
res = {}
for name, make in [("vq", lambda **kw: VectorQuantize(dim=8, codebook_size=16, **kw)),
                   ("gmvq", lambda **kw: gk.GaussianMixtureVQ(dim=8, codebook_size=16, seed=0, **kw))]:
    row = {}
    for zeros in (True, False):
        vq = make(return_zeros_for_masked_padding=zeros)
        for how, kw in (("mask", dict(mask=mask)), ("lens", dict(lens=lens))):
            quantized, codes, loss = vq(x, **kw)
            pad = quantized[~mask]
            row[f"{how}_{zeros}"] = dict(
                shapes=[list(quantized.shape), list(codes.shape)], codes_pad=sorted(set(codes[~mask].tolist())),
                codes_kept_in_range=bool(((codes[mask] >= 0) & (codes[mask] < 16)).all()),
                pad=("zeros" if not pad.any() else "input" if torch.equal(pad, x.detach()[~mask]) else "other"),
                loss_finite=bool(torch.isfinite(loss).all()))
        vq.eval()  # no vector to quantize: every position is padding, the loss 0
        for how, xs, kw in (("none_kept", x, dict(mask=torch.zeros_like(mask))), ("empty", x[:0], {})):
            quantized, codes, loss = vq(xs, **kw)
            row[f"{how}_{zeros}"] = dict(
                shapes=[list(quantized.shape), list(codes.shape)], codes=sorted(set(codes.flatten().tolist())),
                pad=("zeros" if not quantized.any() else "input" if torch.equal(quantized, xs.detach()) else "other"),
                loss=float(loss))
    res[name] = row
print(json.dumps(res))
'''


def test_padding_mask_and_lens_as_vector_quantize():
    """``mask=`` and ``lens=`` on padded sequences give what VectorQuantize gives at the padding: code −1
    and zeros, or the input with ``return_zeros_for_masked_padding=False``; so does an eval call with a
    mask that keeps nothing or an empty batch (loss 0)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", MASKED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["gmvq"] == res["vq"], res
    assert res["vq"]["mask_True"]["pad"] == "zeros" and res["vq"]["lens_False"]["pad"] == "input"
    assert res["vq"]["mask_True"]["codes_pad"] == [-1] and res["vq"]["mask_True"]["codes_kept_in_range"]
    assert res["vq"]["none_kept_False"] == dict(shapes=[[3, 6, 8], [3, 6]], codes=[-1], pad="input", loss=0.0)
    assert res["vq"]["empty_True"] == dict(shapes=[[0, 6, 8], [0, 6]], codes=[], pad="zeros", loss=0.0)


@pytest.mark.parametrize("kw", [dict(heads=4, codebook_dim=8), dict(heads=2), dict(codebook_dim=8),
                                dict(heads=4, codebook_dim=8, accept_image_fmap=True),
                                dict(codebook_dim=8, accept_image_fmap=True), dict(accept_3d_fmap=True),
                                dict(heads=2, codebook_dim=16, accept_3d_fmap=True),
                                dict(heads=4, codebook_dim=8, separate_codebook_per_head=True),
                                dict(heads=4, separate_codebook_per_head=True),
                                dict(heads=1, separate_codebook_per_head=True),
                                dict(heads=4, codebook_dim=8, separate_codebook_per_head=True, accept_image_fmap=True)])
def test_heads_and_codebook_dim_as_vector_quantize(kw):
    """The same ``heads`` / ``codebook_dim`` / ``accept_3d_fmap`` / ``separate_codebook_per_head`` give
    the shapes VectorQuantize gives: quantized, codes (a last axis of heads), the codebook ((heads, K,
    codebook_dim) when separate) and the projections' weights."""
    import torch
    from vector_quantize_pytorch import VectorQuantize

    import gmvq_kernels as gk

    torch.manual_seed(0)
    ours = gk.GaussianMixtureVQ(32, 16, impl="torch", seed=0, **kw)
    theirs = VectorQuantize(dim=32, codebook_size=16, **kw)
    x = (torch.randn(2, 32, 3, 5) if kw.get("accept_image_fmap") else torch.randn(2, 32, 2, 3, 4)
         if kw.get("accept_3d_fmap") else torch.randn(2, 10, 32))
    (q1, c1, _), (q2, c2, _) = ours(x), theirs(x)
    assert q1.shape == q2.shape == x.shape and c1.shape == c2.shape, (q1.shape, q2.shape, c1.shape, c2.shape)
    assert ours.codebook.shape == theirs.codebook.shape
    for name in ("project_in", "project_out"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert isinstance(a, torch.nn.Identity) == isinstance(b, torch.nn.Identity), name
        if not isinstance(a, torch.nn.Identity):
            assert a.weight.shape == b.weight.shape, name


def test_every_vector_quantize_argument_is_taken_or_answered():
    """Each of VectorQuantize's constructor and forward arguments is one of ours or raises a TypeError
    saying what to do instead (a new one in a later vector-quantize-pytorch fails here until it gets its
    answer)."""
    import inspect

    import torch
    from vector_quantize_pytorch import VectorQuantize

    import gmvq_kernels as gk
    from gmvq_kernels.modules import VQ_ARGUMENTS, VQ_FORWARD_ARGUMENTS

    ours = set(inspect.signature(gk.GaussianMixtureVQ.__init__).parameters)
    theirs = [n for n in inspect.signature(VectorQuantize.__init__).parameters if n != "self"]
    assert "dim" in theirs and "codebook_size" in theirs
    for name in theirs:
        if name in ours:
            continue
        assert name in VQ_ARGUMENTS, name
        with pytest.raises(TypeError, match=rf"GaussianMixtureVQ does not take {name}: "):
            gk.GaussianMixtureVQ(8, 4, **{name: 1})
    # and forward's
    ours = set(inspect.signature(gk.GaussianMixtureVQ.forward).parameters)
    vq = gk.GaussianMixtureVQ(8, 4, impl="reference")
    x = torch.randn(3, 8)
    for name in inspect.signature(VectorQuantize.forward).parameters:
        if name in ours:
            continue
        assert name in VQ_FORWARD_ARGUMENTS, name
        with pytest.raises(TypeError, match=rf"GaussianMixtureVQ.forward does not take {name}: "):
            vq(x, **{name: 1})
    with pytest.raises(TypeError, match=r"GaussianMixtureVQ.forward got an unexpected keyword argument 'colour'"):
        vq(x, colour=1)
