"""Shared test helpers: input factories and the three-way comparison."""
import torch

import gmvq_kernels as gk

OUT_FIELDS = gk.GMVQOutput._fields


def make_inputs(N, K, D, *, dtype=torch.float32, prior=False, device="cpu", seed=0, scale=1.0,
                log_var_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, D, generator=g) * scale).to(dtype)
    means = (torch.randn(K, D, generator=g) * scale).to(dtype)
    log_var = torch.randn(K, generator=g) * log_var_scale + 2 * torch.log(torch.tensor(scale))
    log_prior = torch.randn(K, generator=g) if prior else None
    return [t.to(device) if t is not None else None for t in (x, means, log_var, log_prior)]


def run(inputs, impl, *, cast=None, upstream=None, **kw):
    """Forward (+ backward with a shared upstream gradient for every float output) of gk.gmvq.
    Returns (outputs, grads of x, means, log_var, log_prior (None if absent), upstream)."""
    leaves = [None if t is None else t.detach().clone().to(cast or t.dtype).requires_grad_(True) for t in inputs]
    out = gk.gmvq(*leaves, impl=impl, **kw)
    if upstream is None:
        g = torch.Generator().manual_seed(1234)
        upstream = [None if not o.is_floating_point() else
                    torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in out]
    loss = sum((o.double() * u).sum() for o, u in zip(out, upstream) if u is not None)
    loss.backward()
    return out, [None if t is None else t.grad for t in leaves], upstream


# The kernel's worst error may exceed plain PyTorch's worst by this factor. Two correct fp32 programs
# round differently, and ill-conditioned outputs amplify the difference: measured case (N17-K52-D14,
# scale 10, τ = 0.1): the interpreter's distances (numpy sgemm) have a worst rounding error of 1.4e-3
# against torch's 6e-4, and softmax at τ = 0.1 turns that into 8.6e-4 vs 1.8e-4 in mixture_var, which
# torch reproduces exactly when fed the kernel's logits. A wrong formula errs by orders of magnitude.
ROUNDING_FACTOR = 4.0


def assert_three_way(name, out, refs, gt, rel_tol):
    """max|gt − out| ≤ ROUNDING_FACTOR·max|gt − ref| + rel_tol·max|gt|: the kernel's worst
    error is within a small factor of plain PyTorch's at the same precision, plus a tolerance set by
    the precision (never by the observed error). ``refs``: one or more references at the test precision
    (the same math rounded differently); PyTorch's error is the worst of them, since one fp32 run is a
    single sample of its rounding noise. Worst cases, not elementwise: two fp32 computations round
    differently element by element, and an elementwise bound fails wherever a reference rounds luckily."""
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    out, gt = out.detach().double().cpu(), gt.detach().double().cpu()
    assert out.shape == gt.shape, f"{name}: shape {tuple(out.shape)} != {tuple(gt.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the kernel output"
    scale = gt.abs().max().item() if gt.numel() else 0.0
    err_out = (gt - out).abs()
    err_ref = torch.stack([(gt - r.detach().double().cpu()).abs() for r in refs])
    ref = refs[int(err_ref.flatten(1).max(1).values.argmax())].detach().double().cpu()
    err_ref = (gt - ref).abs()
    bound = ROUNDING_FACTOR * err_ref.max().item() + rel_tol * scale
    if err_out.max().item() > bound:
        worst = err_out.argmax()
        idx = tuple(int(i) for i in torch.unravel_index(worst, gt.shape)) if gt.dim() else ()
        raise AssertionError(
            f"{name}: kernel error {err_out.max().item():.3e} > {ROUNDING_FACTOR}·reference error {err_ref.max().item():.3e} "
            f"+ {rel_tol:.1e}·max|gt| ({scale:.3e}); worst at {idx}: out={out.flatten()[worst].item():.8g} "
            f"ref={ref.flatten()[worst].item():.8g} gt={gt.flatten()[worst].item():.8g}")
