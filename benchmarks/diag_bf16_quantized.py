"""Diagnostic (H200 run 3): bf16 `quantized` error in soft mode, τ = 0.5, with a prior."""
import json, os, sys, torch
sys.path.insert(0, os.getcwd())
import gmvq_kernels as gk
from gmvq_kernels import config
dev = torch.device("cuda")
def case(N, K, D, tau, prior, lv_scale, override=None, dtype=torch.bfloat16):
    gen = torch.Generator(device=dev).manual_seed(N + K + D)
    x = torch.randn(N, D, generator=gen, device=dev).to(dtype)
    m = torch.randn(K, D, generator=gen, device=dev).to(dtype)
    lv = lv_scale * torch.randn(K, generator=gen, device=dev)
    lp = torch.randn(K, generator=gen, device=dev) if prior else None
    noise = gk.gumbel_noise(N, K, seed=5, device=dev)
    config.OVERRIDE.clear()
    if override: config.OVERRIDE["row"] = override
    out = gk.gmvq(x, m, lv, lp, impl="triton", tau=tau, seed=5)
    config.OVERRIDE.clear()
    gt = gk.gmvq_reference(x.double(), m.double(), lv.double(), None if lp is None else lp.double(), tau=tau, noise=noise.double())
    # float64 emulation of bf16-rounded softmax weights
    lvd = lv.double(); a, b, v = gk.reference.component_terms(lvd, gk.reference.log_prior_probs(None if lp is None else lp.double(), K, lvd), D)
    ell = b - gk.reference.sq_distances(x.double(), m.double()) * a
    y = torch.softmax((ell + noise.double()) / tau, 1)
    yb = (y / y.max(1, keepdim=True).values).to(torch.bfloat16).double()
    z_emul = (yb @ m.double()) / (y / y.max(1, keepdim=True).values).sum(1, keepdim=True)
    err = (out.quantized.double() - gt.quantized).abs()
    row = err.max(1).values.argmax().item()
    return dict(N=N, K=K, D=D, tau=tau, prior=prior, override=str(override),
                kernel_rel=(err.max() / gt.quantized.abs().max()).item(),
                emul_rel=((z_emul - gt.quantized).abs().max() / gt.quantized.abs().max()).item(),
                worst_row=row, worst_gt=gt.quantized[row, :4].tolist(), worst_out=out.quantized[row, :4].float().tolist(),
                ymax_row=y[row].max().item(), rows_bad=int((err.max(1).values > 0.05 * gt.quantized.abs().max()).sum()),
                lat_rel=((out.latent_nll.double() - gt.latent_nll).abs().max() / gt.latent_nll.abs().max()).item())
KC = config.KernelConfig
for args in [(2048, 4096, 64, 0.5, True, 0.3), (2048, 4096, 64, 0.5, True, 0.3, KC(128, 64, 8, 1)),
             (2048, 4096, 64, 0.5, True, 0.3, KC(64, 64, 4, 2)), (2048, 4096, 64, 1.0, False, 0.0),
             (2048, 4096, 64, 0.5, False, 0.0), (2048, 4096, 32, 0.5, True, 0.3), (2048, 4096, 128, 0.5, True, 0.3),
             (2048, 4096, 64, 0.5, True, 0.3, None, torch.float16)]:
    try:
        print(json.dumps(case(*args)), flush=True)
    except Exception as e:
        print("ERR", args, repr(e)[:500], flush=True)
