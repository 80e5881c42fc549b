"""What the counter-based noise costs a CPU training step (a diagnostic, not a mode of the package).

Three steps interleaved in one process, 40 each after 5 warm-up steps, median ms:
  gmvq               GaussianMixtureVQ(32, 512), impl="auto" (on a CPU: impl="torch" with the NumPy twin)
  gmvq_cached_noise  the same, with eager.gumbel_noise patched to hand back a copy of noise drawn once
  vq                 vector-quantize-pytorch's VectorQuantize(dim=32, codebook_size=512)
The step is speed.py's --cpu-step loop: forward on a (64, 32, 4, 4) batch, quantized.square().mean() +
loss, backward, Adam (GM-VQ; VectorQuantize's EMA codebook has no parameters).

    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 python noise_share.py
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "0")
import time  # noqa: E402

import torch  # noqa: E402
from vector_quantize_pytorch import VectorQuantize  # noqa: E402

import gmvq_kernels as gk  # noqa: E402
from gmvq_kernels import eager  # noqa: E402

real = eager.gumbel_noise
drawn = {}


def cached(n, K, seed, device=None, row_offset=0):
    key = (n, K, row_offset)
    if key not in drawn:
        drawn[key] = real(n, K, seed, device=device, row_offset=row_offset)
    return drawn[key].clone()


def make(kind, latents):
    m = (VectorQuantize(dim=32, codebook_size=512, accept_image_fmap=True) if kind == "vq"
         else gk.GaussianMixtureVQ(32, 512, seed=0, accept_image_fmap=True))
    opt = torch.optim.Adam(m.parameters(), 1e-3) if kind != "vq" else None

    def step():
        eager.gumbel_noise = cached if kind == "gmvq_cached_noise" else real
        z = latents.clone().requires_grad_(True)
        quantized, _, loss = m(z)[:3]
        (quantized.square().mean() + loss.sum()).backward()
        if opt:
            opt.step()
            opt.zero_grad()
    return step


def main():
    torch.manual_seed(0)
    latents = torch.randn(64, 32, 4, 4)
    kinds = ["gmvq", "gmvq_cached_noise", "vq"]
    steps = {k: make(k, latents) for k in kinds}
    for k in kinds:
        for _ in range(5):
            steps[k]()
    times = {k: [] for k in kinds}
    for _ in range(40):
        for k in kinds:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    print({k: round(v, 2) for k, v in med.items()}, "ratios to vq:", {k: round(v / med["vq"], 2) for k, v in med.items()})


if __name__ == "__main__":
    main()
