"""Checking a build of the kernels: reproducible inputs and the three-way pass rule that the test suite
and ``benchmarks/gpu_check.py`` apply (usable by anyone checking their own build on their own GPU).

Three-way comparison: ground truth ``gt`` = the reference in float64; ``refs`` = the reference at the
test precision (the same math rounded differently, one or more samples); ``out`` = the kernel. The
kernel passes when its worst error is within ROUNDING_FACTOR of plain PyTorch's worst error at the same
precision, plus a tolerance set by the precision (never by the observed error)."""
import contextlib
import math

import numpy as np
import torch

# The kernel's worst error may exceed plain PyTorch's worst by this factor. Two correct fp32 programs
# round differently, and ill-conditioned outputs amplify the difference: measured case (N17-K52-D14,
# scale 10, τ = 0.1): the interpreter's distances (numpy sgemm) have a worst rounding error of 1.4e-3
# against torch's 6e-4, and softmax at τ = 0.1 turns that into 8.6e-4 vs 1.8e-4 in mixture_var, which
# torch reproduces exactly when fed the kernel's logits. A wrong formula errs by orders of magnitude.
ROUNDING_FACTOR = 4.0
FP32_TINY = torch.finfo(torch.float32).tiny
# fp32 inputs: the kernel's own rounding (fp32 accumulation) is ~1e-6 of the largest value; bf16 and
# fp16: the quantized output and the input gradients are stored in the input dtype (2**-8, 2**-11).
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-8, torch.float16: 2**-11}
# Half inputs must also be within this of max|gt| outright (outputs stored in half, p_y rounded to half
# for the dot): a loose relative rule alone once let garbage rows through.
HALF_ABS_REL = 2**-7


def make_inputs(N, K, D, *, dtype=torch.float32, prior=False, device="cpu", seed=0, scale=1.0,
                log_var_scale=0.3, offset=0.0, near_codes=0.0, requires_grad=False):
    """[x (N, D), means (K, D), log_var (K,), log_prior (K,) or None], reproducible from ``seed``:
    x, means ~ offset + scale·N(0, 1) in ``dtype`` (a large offset: data clustered far from the origin,
    |μ| ≫ the spread); log_var ~ log_var_scale·N(0, 1) + log scale² (fp32). near_codes > 0: a trained
    quantizer's inputs instead, each row a random code's mean plus near_codes·scale·N(0, 1) and
    log_var centred on log (near_codes·scale)², so that q and the sample are peaked."""
    g = torch.Generator().manual_seed(seed)
    x = (offset + torch.randn(N, D, generator=g) * scale).to(dtype)
    means = (offset + torch.randn(K, D, generator=g) * scale).to(dtype)
    log_var = torch.randn(K, generator=g) * log_var_scale + 2 * torch.log(torch.tensor(scale))
    log_prior = torch.randn(K, generator=g) if prior else None
    if near_codes > 0:
        codes = torch.randint(0, K, (N,), generator=g)
        x = (means.float()[codes] + torch.randn(N, D, generator=g) * (near_codes * scale)).to(dtype)
        log_var = log_var + 2 * math.log(near_codes)
    out = [t.to(device) if t is not None else None for t in (x, means, log_var, log_prior)]
    return [t.requires_grad_(requires_grad) if t is not None else None for t in out]


def three_way(out, refs, gt, rel_tol):
    """(ok, kernel error, bound, worst flat index) of the pass rule max|gt − out| ≤ ROUNDING_FACTOR·
    max|gt − ref| + rel_tol·max|gt| (+ fp32's smallest normal, 1.2·10⁻³⁸), PyTorch's error being the
    worst over ``refs`` (one fp32 run is a single sample of its rounding noise). Worst cases, not
    elementwise: two fp32 computations round differently element by element, and an elementwise bound
    fails wherever a reference rounds luckily."""
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    out, gt = out.detach().double().cpu(), gt.detach().double().cpu()
    err_out = (gt - out).abs()
    err_ref = max((gt - r.detach().double().cpu()).abs().max().item() for r in refs)
    # + fp32's smallest normal: an output whose every value lies below it (an entropy of 10⁻²¹⁶ where
    # every posterior is one-hot) is 0 in any fp32 computation, which the relative term alone refuses
    bound = ROUNDING_FACTOR * err_ref + rel_tol * gt.abs().max().item() + FP32_TINY
    return err_out.max().item() <= bound, err_out.max().item(), bound, int(err_out.argmax())


def assert_three_way(name, out, refs, gt, rel_tol):
    """``three_way`` as an assertion that reports the excess, where, and the values; also requires the
    kernel's values to be finite."""
    assert out.shape == gt.shape, f"{name}: shape {tuple(out.shape)} != {tuple(gt.shape)}"
    assert torch.isfinite(out.detach()).all(), f"{name}: non-finite values in the kernel output"
    ok, err, bound, worst = three_way(out, refs, gt, rel_tol)
    if not ok:
        gt64, out64 = gt.detach().double().cpu(), out.detach().double().cpu()
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), gt.shape)) if gt.dim() else ()
        raise AssertionError(f"{name}: kernel error {err:.3e} > bound {bound:.3e} (= {ROUNDING_FACTOR}·reference "
                             f"error + {rel_tol:.1e}·max|gt| + {FP32_TINY:.1e}); worst at {idx}: "
                             f"out={out64.flatten()[worst].item():.8g} gt={gt64.flatten()[worst].item():.8g}")


def interpreter_rounds_bf16_to_nearest():
    """Make Triton's interpreter round fp32 → bf16 casts to nearest even, as the GPU does
    (``cvt.rn.bf16.f32``; Triton's own semantics name RTNE the default for float downcasts). The
    interpreter (triton 3.7.1) truncates them instead, toward zero: a tile rounded to bf16 before a dot
    then carries twice the GPU's error, all of it one-sided, so a sum over many codes drifts by ~2⁻⁹
    of its size where the GPU's errors average out (a whole row of dx 0.4–0.7 % low in a bf16 test).
    The test suite calls this before any kernel runs (tests/conftest.py), so that the CPU tests hold
    the kernels to the GPU's rounding, not to a worse one; ``test_interpreter_bf16_cast_rounds_like_torch``
    checks it. No effect outside the interpreter; idempotent."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.cast_impl, "_gmvq_rtne", False):
        return
    truncating = builder.cast_impl
    import triton.language as tl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            f = np.asarray(src.data, dtype=np.float32)
            bits = f.view(np.uint32)
            # + 0x7FFF + the kept part's lowest bit, then the top 16 bits: round half to even; ±inf and
            # overflow to ±inf come out right, NaN (whose sum could wrap) is set to the quiet NaN
            out = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
            out[np.isnan(f)] = 0x7FC0
            return interpreter.TensorHandle(out, dst_type.scalar)
        return truncating(self, src, dst_type)

    cast_impl._gmvq_rtne = True
    builder.cast_impl = cast_impl


def interpreter_min_max_ignore_nan():
    """Make Triton's interpreter (before 3.8) give ``tl.minimum``/``tl.maximum`` of floats the GPU's NaN
    semantics: by default (``propagate_nan=NONE``) they lower to PTX ``min.f32``/``max.f32``, which
    return the other operand when one is NaN (SASS ``FMNMX``); with ``PropagateNan.ALL`` to
    ``min.NaN.f32`` (``FMNMX.NAN``), which return NaN. Triton 3.6–3.7's interpreter propagated NaN
    either way (NumPy's ``minimum``), so a kernel that counted on a NaN passing through a default min or
    max passed the CPU tests and gave finite garbage on a GPU (q̄ with a NaN row: README, "NaN policy").
    Triton 3.8's interpreter takes ``fmin``/``fmax``, as this does. Applied by tests/conftest.py;
    ``test_interpreter_min_max_treat_nan_like_the_gpu`` checks it. No effect outside the interpreter;
    idempotent."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    builder.create_minnumf = lambda self, lhs, rhs: self.binary_op(lhs, rhs, np.fmin)
    builder.create_maxnumf = lambda self, lhs, rhs: self.binary_op(lhs, rhs, np.fmax)


@contextlib.contextmanager
def interpreter_exact_fp32_dots(chunk=None):
    """Within: Triton's interpreter computes fp32 × fp32 → fp32 dots as float64 products and sums
    rounded once to fp32, so that a distance no longer depends on the orientation or shape of the tile
    that computes it. NumPy's fp32 matmul (the interpreter's) sums in an order that does, so the
    kernels' passes (rows × codes tiles in the forward, Δ and dx; codes × rows in q̄ and dμ) differ in
    the last bits of the same distance; a GPU's ``ieee`` fp32 dot is an FMA chain over D in both
    orientations. Where probabilities are peaked and σ² small (a trained quantizer: ``make_inputs``'s
    near_codes), those bits, times 1/(2σ²τ), leave the passes disagreeing on each row's probabilities
    (README, "Correctness"). For tests of the kernels' formulas there, and ``tests/random_sweep.py
    --exact-dots``.

    ``chunk`` (e.g. 8, a tf32 HGMMA's depth): the products summed exactly ``chunk`` at a time along the
    contraction and each partial sum added to the accumulator with one rounding, in order, as tensor
    cores accumulate; still orientation-free, but a result then depends on the order of the dots that
    accumulate into one accumulator (tiles.mma's cross products), as on a GPU."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    plain = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.data.dtype == b.data.dtype == d.data.dtype == np.float32:
            a64, b64 = a.data.astype(np.float64), b.data.astype(np.float64)
            if chunk is None:
                return interpreter.TensorHandle(np.matmul(a64, b64).astype(np.float32) + d.data, d.dtype.scalar)
            acc = d.data
            for k in range(0, a64.shape[-1], chunk):
                acc = (acc + np.matmul(a64[..., k:k + chunk], b64[..., k:k + chunk, :])).astype(np.float32)
            return interpreter.TensorHandle(acc, d.dtype.scalar)
        return plain(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    try:
        yield
    finally:
        builder.create_dot = plain


def interpreter_like_gpu():
    """Both of the above: what the tests (tests/conftest.py) and ``gpu_check.py --dry`` run the
    interpreter with, so that the CPU holds the kernels to the GPU's rounding and NaN semantics."""
    interpreter_rounds_bf16_to_nearest()
    interpreter_min_max_ignore_nan()
