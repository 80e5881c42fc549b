"""Every bad input named in DESIGN.md §5 raises a ValueError/TypeError naming argument, expectation, value."""
import pytest
import torch

import gmvq_kernels as gk

from utils import make_inputs


@pytest.fixture
def good():
    return make_inputs(6, 5, 4, prior=True)


def call(x, m, lv, lp=None, impl="reference", **kw):
    return gk.gmvq(x, m, lv, lp, impl=impl, **kw)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda x, m, lv, lp: (x[0], m, lv, lp), ValueError, r"x must have shape \(N, D\); got \(4,\)"),
    (lambda x, m, lv, lp: (x, m[:, :3], lv, lp), ValueError,
     r"means must have shape \(K, D\) with K >= 1 and D == x.shape\[1\] == 4; got \(5, 3\)"),
    (lambda x, m, lv, lp: (x, m[None], lv, lp), ValueError, r"means must have shape \(K, D\); got \(1, 5, 4\)"),
    (lambda x, m, lv, lp: (x, m, lv[:3], lp), ValueError, r"log_var must have shape \(K,\) == \(5,\); got \(3,\)"),
    (lambda x, m, lv, lp: (x, m, lv, lp[:2]), ValueError, r"log_prior must have shape \(K,\) == \(5,\) or be None; got \(2,\)"),
    (lambda x, m, lv, lp: (x, m.double(), lv, lp), TypeError, r"means must have the dtype of x \(torch.float32\); got torch.float64"),
    (lambda x, m, lv, lp: (x.long(), m, lv, lp), TypeError, r"x must have a floating dtype in .*; got torch.int64"),
    (lambda x, m, lv, lp: (x[:0], m, lv, lp), ValueError, r"x must be non-empty .*; got \(0, 4\)"),
    (lambda x, m, lv, lp: (x[:, :0], m[:, :0], lv, lp), ValueError, r"x must be non-empty .*; got \(6, 0\)"),
    (lambda x, m, lv, lp: (x, m[:0], lv[:0], lp), ValueError, r"means must have shape \(K, D\) with K >= 1.*; got \(0, 4\)"),
    (lambda x, m, lv, lp: (x.numpy(), m, lv, lp), TypeError, r"x must be a torch.Tensor; got ndarray"),
    (lambda x, m, lv, lp: (x, m, lv.clone().fill_(float("nan")), lp), ValueError, r"log_var must be finite"),
    (lambda x, m, lv, lp: (x, m.clone().fill_(float("inf")), lv, lp), ValueError, r"means must be finite"),
    (lambda x, m, lv, lp: (x, m, lv, lp.clone().fill_(float("-inf"))), ValueError, r"log_prior must be finite"),
    (lambda x, m, lv, lp: (x, m, lv.to("meta"), lp), ValueError, r"log_var must be on the device of x \(cpu\); got meta"),
])
def test_bad_tensors(good, mutate, exc, match):
    with pytest.raises(exc, match=match):
        call(*mutate(*good))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(tau=0.0), ValueError, r"tau must be a finite number > 0; got 0.0"),
    (dict(tau=-1), ValueError, r"tau must be a finite number > 0; got -1"),
    (dict(tau=float("inf")), ValueError, r"tau must be a finite number > 0; got inf"),
    (dict(tau=float("nan")), ValueError, r"tau must be a finite number > 0; got nan"),
    (dict(tau="1"), ValueError, r"tau must be a finite number > 0; got '1'"),
    (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 2\*\*64\) or a 0-dim int64 CPU tensor; got -1"),
    (dict(seed=1.5), ValueError, r"seed must be an integer in \[0, 2\*\*64\) or a .*; got 1.5"),
    (dict(seed=torch.tensor([1])), ValueError, r"seed must be .* got a tensor of shape \(1,\), dtype torch.int64 on cpu"),
    (dict(seed=torch.tensor(1, dtype=torch.int32)), ValueError, r"seed must be .* got a tensor of shape \(\), dtype torch.int32"),
    (dict(impl="cuda"), ValueError, r"impl must be one of \('auto', 'triton', 'reference'\); got 'cuda'"),
    (dict(dot_precision="fp16"), ValueError, r"dot_precision must be None or one of .*; got 'fp16'"),
    (dict(noise=torch.zeros(6, 4)), ValueError, r"noise must have shape \(N, K\) == \(6, 5\); got \(6, 4\)"),
    (dict(noise=torch.zeros(6, 5, dtype=torch.int64)), TypeError, r"noise must have a floating dtype; got torch.int64"),
])
def test_bad_options(good, kw, exc, match):
    with pytest.raises(exc, match=match):
        call(*good, **kw)


def test_triton_on_cpu_without_interpreter_is_an_error(good, monkeypatch):
    from gmvq_kernels import config
    monkeypatch.setattr(config, "INTERPRET", False)
    with pytest.raises(ValueError, match=r"impl='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1"):
        gk.gmvq(*good, impl="triton")
    # and auto falls back to the reference there (documented), it does not raise
    assert gk.gmvq(*good, impl="auto").codes.shape == (6,)


def test_triton_rejects_float64(good):
    from gmvq_kernels import config
    if not config.INTERPRET and not torch.cuda.is_available():
        pytest.skip("needs the interpreter or a GPU")
    x, m, lv, lp = [t.double() for t in good]
    with pytest.raises(TypeError, match=r"impl='triton' needs x of dtype float32, float16 or bfloat16; got torch.float64"):
        gk.gmvq(x, m, lv, lp, impl="triton")


def test_auto_dispatch(good):
    from gmvq_kernels import config
    from gmvq_kernels.functional import resolve_impl
    want = "triton" if config.INTERPRET else "reference"
    assert resolve_impl("auto", good[0]) == want
    assert resolve_impl("auto", good[0].double()) == "reference"


def test_non_contiguous_inputs_are_handled(good, device):
    x, m, lv, lp = [t.to(device) for t in good]
    xt = torch.stack([x, x], 2)[:, :, 0]  # strided view with the values of x
    assert not xt.is_contiguous()
    for impl in ("reference", "triton"):
        if impl == "triton" and not (gk.functional.can_use_triton(x.device)):
            continue
        a = gk.gmvq(xt, m, lv, lp, impl=impl, seed=1)
        b = gk.gmvq(x, m, lv, lp, impl=impl, seed=1)
        for name, u, w in zip(a._fields, a, b):
            assert torch.equal(u, w), name


def test_gumbel_noise_args():
    with pytest.raises(ValueError, match=r"gumbel_noise needs N >= 1 and K >= 1; got N=0, K=3"):
        gk.gumbel_noise(0, 3)
    with pytest.raises(ValueError, match=r"gumbel_noise needs row_offset >= 0; got -1"):
        gk.gumbel_noise(2, 3, row_offset=-1)
