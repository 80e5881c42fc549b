"""Every bad input raises a ValueError/TypeError naming the argument, the expectation and what was given."""
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
    (lambda x, m, lv, lp: (x, m, lv - 89.0, lp), ValueError,
     r"log_var must lie in \[-30, 30\] \(σ² from 1e-13 to 1e13\); got values from -89.* to -88.*"),
    (lambda x, m, lv, lp: (x, m, lv + 89.0, lp), ValueError, r"log_var must lie in \[-30, 30\]"),
])
def test_bad_tensors(good, mutate, exc, match):
    with pytest.raises(exc, match=match):
        call(*mutate(*good))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(tau=0.0), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got 0.0"),
    (dict(tau=-1), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got -1"),
    (dict(tau=float("inf")), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got inf"),
    (dict(tau=float("nan")), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got nan"),
    (dict(tau="1"), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got '1'"),
    (dict(seed=-1), ValueError,
     r"seed must be an integer in \[0, 2\*\*64\) or a 0-dim int64 tensor on the CPU or a CUDA device; got -1"),
    (dict(seed=1.5), ValueError, r"seed must be an integer in \[0, 2\*\*64\) or a .*; got 1.5"),
    (dict(seed=torch.tensor([1])), ValueError, r"seed must be .* got a tensor of shape \(1,\), dtype torch.int64 on cpu"),
    (dict(seed=torch.tensor(1, dtype=torch.int32)), ValueError, r"seed must be .* got a tensor of shape \(\), dtype torch.int32"),
    (dict(seed=torch.tensor(1, device="meta")), ValueError, r"seed must be .* got a tensor .* on meta"),
    (dict(impl="cuda"), ValueError, r"impl must be one of \('auto', 'triton', 'torch', 'reference'\); got 'cuda'"),
    (dict(dot_precision="fp16"), ValueError, r"dot_precision must be None or one of .*; got 'fp16'"),
    (dict(noise=torch.zeros(6, 4)), ValueError, r"noise must have shape \(N, K\) == \(6, 5\); got \(6, 4\)"),
    (dict(noise=torch.zeros(6, 5, dtype=torch.int64)), TypeError, r"noise must have a floating dtype; got torch.int64"),
    (dict(noise=torch.zeros(6, 5, requires_grad=True)), ValueError, r"noise must not require grad"),
    (dict(tau=1e-5), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got 1e-05"),
    (dict(tau=1e46), ValueError, r"tau must be a finite number in \[0.0001, 10000\]; got 1e\+46"),
    (dict(hard="no"), TypeError, r"hard must be a bool; got 'no'"),
    (dict(process_group="world"), TypeError, r"process_group must be a torch.distributed ProcessGroup or None; got 'world'"),
])
def test_bad_options(good, kw, exc, match):
    with pytest.raises(exc, match=match):
        call(*good, **kw)


def test_triton_on_cpu_without_interpreter_is_an_error(good, monkeypatch):
    from gmvq_kernels import config
    monkeypatch.setattr(config, "INTERPRET", False)
    with pytest.raises(ValueError, match=r"impl='triton' needs NVIDIA CUDA tensors, or CPU tensors with "
                                         r"TRITON_INTERPRET=1 .*got x on cpu\. impl='auto' or 'reference' runs"):
        gk.gmvq(*good, impl="triton")
    # and auto falls back to the reference there (documented), it does not raise
    assert gk.gmvq(*good, impl="auto").codes.shape == (6,)


def test_interpreter_that_cannot_run_the_kernels_is_named(good, monkeypatch):
    """triton 3.6's interpreter beside NumPy >= 2.4 fails deep inside a launch (a TypeError about
    0-dimensional arrays): a launch there raises a RuntimeError naming both versions and the remedy."""
    from gmvq_kernels import config
    problem = config.interpreter_incompatibility
    assert problem("3.7.1", "2.4.6") is None and problem("3.6.0", "2.3.5") is None
    assert problem("3.8.0", "3.0.0") is None and problem("3.5.1", "1.26.4") is None
    msg = problem("3.6.0", "2.4.0rc1")
    assert "triton 3.6.0" in msg and "NumPy 2.4.0rc1" in msg and "numpy<2.4 or triton>=3.7" in msg
    if not config.INTERPRET:
        pytest.skip("launches raise only under Triton's interpreter")
    monkeypatch.setattr(config, "_installed_interpreter_incompatibility", lambda: msg)
    with pytest.raises(RuntimeError, match=r"triton 3\.6\.0's interpreter cannot run the kernels with NumPy 2\.4\.0rc1"):
        gk.gmvq(*good, impl="triton")


def test_rocm_gpus_take_the_reference_and_the_numpy_noise(monkeypatch):
    """A ROCm build of torch calls AMD GPUs "cuda" too; the kernels' noise takes its logs in PTX, so
    there impl='auto' runs the reference and gumbel_noise the NumPy twin (copied to the device)."""
    from types import SimpleNamespace

    from gmvq_kernels import checks
    from gmvq_kernels.functional import resolve_impl
    cuda = torch.device("cuda")
    gpu_x = SimpleNamespace(device=cuda, dtype=torch.bfloat16)  # the dispatch reads only these
    # gumbel_noise launches its kernel where checks.can_use_triton holds, else the NumPy twin
    assert checks.can_use_triton(cuda) and resolve_impl("auto", gpu_x) == "triton"
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert not checks.can_use_triton(cuda) and not checks.nvidia_gpu(cuda)
    assert resolve_impl("auto", gpu_x) == "reference"
    assert checks.can_use_triton(torch.device("cpu")) == checks.config.INTERPRET  # the CPU as before


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
    cpu = good[0].device.type == "cpu"
    want = "triton" if config.INTERPRET or not cpu else "torch"
    assert resolve_impl("auto", good[0]) == want
    assert resolve_impl("auto", good[0].double()) == ("torch" if cpu else "reference")  # the kernels take no fp64


def test_non_contiguous_inputs_are_handled(good, device):
    x, m, lv, lp = [t.to(device) for t in good]
    xt = torch.stack([x, x], 2)[:, :, 0]  # strided view with the values of x
    assert not xt.is_contiguous()
    for impl in ("reference", "torch", "triton"):
        if impl == "triton" and not (gk.functional.can_use_triton(x.device)):
            continue
        a = gk.gmvq(xt, m, lv, lp, impl=impl, seed=1)
        b = gk.gmvq(x, m, lv, lp, impl=impl, seed=1)
        for name, u, w in zip(a._fields, a, b):
            assert torch.equal(u, w), name


@pytest.mark.parametrize("args, kw, match", [
    ((0, 3), {}, r"N must be an integer >= 1; got 0"),
    ((2, True), {}, r"K must be an integer >= 1; got True"),
    ((2, 3), dict(row_offset=-1), r"row_offset must be an integer >= 0; got -1"),
    ((2, 3), dict(seed=-1),
     r"seed must be an integer in \[0, 2\*\*64\) or a 0-dim int64 tensor on the CPU or a CUDA device; got -1"),
    ((2, 3), dict(seed=1.9), r"seed must be .*; got 1.9"),
    ((2, 3), dict(seed="7"), r"seed must be .*; got '7'"),
])
def test_gumbel_noise_args(args, kw, match):
    with pytest.raises(ValueError, match=match):
        gk.gumbel_noise(*args, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(tau=float("inf")), r"tau must be a finite number in"),
    (dict(dim=True), r"dim must be an integer >= 1; got True"),
    (dict(beta=float("nan")), r"beta must be a finite number in \[0, inf\]; got nan"),
    (dict(gamma=-1.0), r"gamma must be a finite number in \[0, inf\]; got -1.0"),
    (dict(init_log_var=float("nan")), r"init_log_var must be a finite number in \[-30, 30\]; got nan"),
    (dict(impl="cuda"), r"impl must be one of \('auto', 'triton', 'torch', 'reference'\); got 'cuda'"),
    (dict(hard=1), r"hard must be a bool; got 1"),
    (dict(device_seed="cuda"), r"device_seed must be a bool; got 'cuda'"),
])
def test_module_constructor_args(kw, match):
    args = dict(dim=4, codebook_size=8)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        gk.GaussianMixtureVQ(args.pop("dim"), args.pop("codebook_size"), **args)


def test_module_rejects_integer_input_and_bad_extra_state():
    vq = gk.GaussianMixtureVQ(4, 8, seed=0)
    with pytest.raises(TypeError, match=r"x must have a floating dtype \(latents, not codes\); got torch.int64"):
        vq(torch.ones(3, 4, dtype=torch.int64))
    state = vq.state_dict()
    # (saved, what the message shows): the counter as a tensor (saved since 2026-12-05) or as {"next_seed": n}
    cases = [({"next_seed": bad}, str(bad)) for bad in (3.7, -3, 2**64 + 5, "3")] + [
        (torch.tensor(3.0), r"tensor\(3\.\)"), (torch.tensor(-3), "-3"), (torch.tensor([3]), r"tensor\(\[3\]\)"),
        (torch.tensor(2**63 - 1) + 1, str(-2**63))]
    for saved, shown in cases:
        state["_extra_state"] = saved
        with pytest.raises(ValueError, match=r"extra_state \(the step counter\) must be a 0-dim integer tensor or "
                                             rf"next_seed an integer, in \[0, 2\*\*63\); got '?{shown}'?$"):
            vq.load_state_dict(state)


def test_losses_and_usage_reject_bad_values():
    out = gk.gmvq(*make_inputs(6, 5, 4), impl="reference")
    with pytest.raises(ValueError, match=r"beta must be a finite number in \[0, inf\]; got nan"):
        gk.albo_loss(out, beta=float("nan"))
    with pytest.raises(ValueError, match=r"gamma must be a finite number"):
        gk.elbo_loss(out, gamma=float("inf"))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, codebook_size\) = \[0, 4\); got values from 0 to 4"):
        gk.codebook_usage(torch.tensor([0, 4]), 4)


def test_fraction_tau_and_numpy_tau_work():
    from fractions import Fraction

    import numpy as np

    x, m, lv, _ = make_inputs(6, 5, 4)
    a = gk.gmvq(x, m, lv, tau=Fraction(1, 4), impl="reference", seed=1)
    b = gk.gmvq(x, m, lv, tau=np.float32(0.25), impl="reference", seed=1)
    c = gk.gmvq(x, m, lv, tau=0.25, impl="reference", seed=1)
    assert torch.equal(a.quantized, c.quantized) and torch.equal(b.quantized, c.quantized)


def test_triton_rejects_d_above_512(device):
    if not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    x, m, lv, _ = make_inputs(2, 3, 513, device=device)
    with pytest.raises(ValueError, match=r"x must have D <= 512 for the fused kernels .*; got D = 513"):
        gk.gmvq(x, m, lv, impl="triton")
    assert gk.gmvq(x, m, lv, impl="reference").quantized.shape == (2, 513)


def test_triton_rejects_k_of_2_pow_31(device):
    if not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    x = torch.zeros(2, 1, device=device)
    m = torch.zeros(1, 1, device=device).expand(2**31, 1)  # a view: no memory behind the 2³¹ codes
    lv = torch.zeros(1, device=device).expand(2**31)
    with pytest.raises(ValueError, match=r"means must have K <= 2147483647 codes .*; got K = 2147483648"):
        gk.gmvq(x, m, lv, impl="triton")


def test_double_backward_through_kernels_is_a_clear_error(device):
    if not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    x, m, lv, _ = make_inputs(5, 7, 4, device=device)
    x.requires_grad_(True)
    out = gk.gmvq(x, m, lv, impl="triton")
    (g,) = torch.autograd.grad(out.log_likelihood.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward .* is not supported; use impl='reference'"):
        g.sum().backward()


def test_eager_calls_skip_the_custom_op(monkeypatch, device):
    """Eager gmvq takes autograd.EagerFused (no torch.library dispatch: less host time); the custom op
    is torch.compile's path (tests/test_torch_compile.py compares the two bitwise)."""
    if not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")

    def refuse(*args):
        raise AssertionError("eager gmvq dispatched the custom op")
    monkeypatch.setattr(gk.functional, "fused_fwd", refuse)
    x, m, lv, _ = make_inputs(5, 7, 4, device=device)
    x.requires_grad_(True)
    gk.gmvq(x, m, lv, impl="triton").quantized.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("impl, dtype", [("triton", torch.float32), ("triton", torch.bfloat16),
                                         ("torch", torch.float32)])
def test_eager_backward_state_is_all_saved_tensors(impl, dtype, device):
    """What the eager paths keep for their backward goes through save_for_backward, no tensor sits on
    ctx itself: activation checkpointing (non-reentrant) frees the saved tensors of its region and
    recomputes them, but a tensor on ctx stays held. Until 2026-12-05 the kernel path held its norm
    operands and per-code constants there (bf16 takes the norm operands, (N, 16) and (K, 16)), and
    impl="torch" its row blocks' (rows, K) tensors."""
    if impl == "triton" and not gk.functional.can_use_triton(torch.device(device)):
        pytest.skip("needs the interpreter or a GPU")
    if impl == "torch" and device != "cpu":
        pytest.skip("impl='torch' is the CPU path")
    x, m, lv, _ = make_inputs(5, 7, 4, device=device, dtype=dtype)
    x.requires_grad_(True)
    out = gk.gmvq(x, m, lv, impl=impl)  # kept: torch 2.11 frees a node's saved tensors with its outputs
    ctx = out.quantized.grad_fn
    while not hasattr(ctx, "saved_tensors"):  # impl="torch" casts its output back to x's dtype after its op
        ctx = ctx.next_functions[0][0]

    def tensors_in(value):
        if isinstance(value, (tuple, list)):
            return any(tensors_in(v) for v in value)
        return isinstance(value, torch.Tensor)
    assert [name for name, value in vars(ctx).items() if tensors_in(value)] == []
    saved = [t for t in ctx.saved_tensors if t is not None]
    if impl == "triton":
        assert sum(t.shape == (5, 16) for t in saved) == (dtype == torch.bfloat16)  # the rows' norm operand
    else:
        assert any(t.shape == (5, 7) for t in saved)  # the row block's (rows, K) tensors


def test_concurrent_interpreted_calls_agree():
    """The interpreter is not thread-safe; interpreted launches are serialised (config.launch_guard)."""
    import threading

    if not gk.functional.config.INTERPRET:
        pytest.skip("the interpreter's lock")
    x, m, lv, _ = make_inputs(24, 40, 8)
    want = gk.gmvq(x, m, lv, impl="triton", seed=2).quantized
    results = [None] * 6

    def work(i):
        results[i] = gk.gmvq(x, m, lv, impl="triton", seed=2).quantized

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, want) for r in results)


def test_removed_fused_backward_flag_warns():
    """GMVQ_FUSED_BACKWARD=1 chose an opt-in backward removed on 2026-12-06: a process that still sets it
    is told so when it imports the package, not silently given the default backward."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for flag, warned in (("1", True), ("0", False)):
        proc = subprocess.run([sys.executable, "-c", "import gmvq_kernels"], env=dict(env, GMVQ_FUSED_BACKWARD=flag),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("GMVQ_FUSED_BACKWARD=1 is ignored" in proc.stderr) == warned, proc.stderr[-2000:]
