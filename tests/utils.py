"""Shared test helpers: forward + backward with upstream gradients by name; the input factory and the
three-way comparison live in gmvq_kernels.testing (gpu_check.py applies the same rule on a GPU)."""
import torch

import gmvq_kernels as gk
from gmvq_kernels.spec import DIFF_OUTPUTS
from gmvq_kernels.testing import assert_three_way, make_inputs  # noqa: F401  (re-exported for the tests)

OUT_FIELDS = gk.GMVQOutput._fields


def run(inputs, impl, *, cast=None, upstream=None, **kw):
    """Forward (+ backward with a shared upstream gradient for every float output) of gk.gmvq.
    ``upstream``: {output name: gradient or None}; by default a random one for every output of
    ``GMVQOutput`` that carries a gradient. Returns (outputs, grads of x, means, log_var, log_prior
    (None if absent), upstream)."""
    leaves = [None if t is None else t.detach().clone().to(cast or t.dtype).requires_grad_(True) for t in inputs]
    out = gk.gmvq(*leaves, impl=impl, **kw)
    if upstream is None:
        g = torch.Generator().manual_seed(1234)
        upstream = {name: torch.randn(getattr(out, name).shape, generator=g, dtype=torch.float64)
                    .to(getattr(out, name).device) for name in DIFF_OUTPUTS}
    loss = sum((getattr(out, name).double() * u).sum() for name, u in upstream.items() if u is not None)
    loss.backward()
    return out, [None if t is None else t.grad for t in leaves], upstream
