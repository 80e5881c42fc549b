"""A/B in one process, steps interleaved: GaussianMixtureVQ(32, 512) eager training steps on a (64, 32, 4, 4)
batch with the CPU noise twin of git revision REV (before: its C rounds per row block, NumPy's logs) and of
the working tree (after: rounds and transform in one C pass over OpenMP threads), beside
vector-quantize-pytorch's VectorQuantize; also the time of the noise call inside the step.

    python benchmarks/results/cpu-step-2026-12-03d/ab_noise.py 03e51ac 150   # REV, rounds
"""
import json, os, subprocess, sys, time
os.environ["TRITON_INTERPRET"] = "0"
import torch
import gmvq_kernels as gk
from gmvq_kernels import eager, noise
from vector_quantize_pytorch import VectorQuantize

rev, rounds = sys.argv[1], int(sys.argv[2])
src = subprocess.run(["git", "show", f"{rev}:gmvq_kernels/noise.py"], capture_output=True, text=True, check=True).stdout
old = src[src.index("# the two multiply chains of a round"):src.index("def _mulhilo_torch")]
old = old.replace('"gmvq_philox", f"#define', '"gmvq_philox_old", f"#define')
ns = dict(noise.__dict__)
exec(old, ns)
if "def _bits_to_gumbel_torch" in src:  # REV's torch-log transform (its twin's choice on CPUs without AVX-512)
    exec(src[src.index("def _bits_to_gumbel_torch"):src.index("def words_to_gumbel")], ns)

new_c = noise.c_philox

def with_lib(lib):
    def draw(N, K, seed, device=None, row_offset=0):
        noise.c_philox = lambda: lib
        try:
            return noise.gumbel_noise_numpy(N, K, seed, row_offset)
        finally:
            noise.c_philox = new_c
    return draw

draws = {"before": lambda N, K, seed, device=None, row_offset=0: ns["gumbel_noise_numpy"](N, K, seed, row_offset),
         "after": with_lib(new_c())}
a, b = (d(1024, 512, 7) for d in draws.values())
inner = {k: [] for k in draws}
def timed(k, d):
    def f(*a, **kw):
        t0 = time.perf_counter(); r = d(*a, **kw); inner[k].append((time.perf_counter() - t0) * 1e3); return r
    return f
draws = {k: timed(k, d) for k, d in draws.items()}
print("before vs after noise: max abs diff", (a - b).abs().max().item())

torch.manual_seed(0)
latents = torch.randn(64, 32, 4, 4)
gmvq = gk.GaussianMixtureVQ(32, 512, seed=0, accept_image_fmap=True)
opt = torch.optim.Adam(gmvq.parameters(), lr=1e-3)
vq = VectorQuantize(dim=32, codebook_size=512, accept_image_fmap=True)

def make_step(q, o=None, draw=None):
    def step():
        if draw is not None:
            eager.gumbel_noise = draw
        z = latents.clone().requires_grad_(True)
        quantized, _, loss = q(z)[:3]
        (quantized.square().mean() + loss.sum()).backward()
        if o is not None:
            o.step(); o.zero_grad()
    return step

steps = {**{k: make_step(gmvq, opt, d) for k, d in draws.items()}, "vector_quantize_pytorch": make_step(vq)}
ms = {k: [] for k in steps}
for _ in range(rounds + 5):
    for k, f in steps.items():
        t0 = time.perf_counter(); f(); ms[k].append((time.perf_counter() - t0) * 1e3)
med = {k: sorted(v[5:])[rounds // 2] for k, v in ms.items()}
for k in steps:
    print(json.dumps(dict(variant=k, ms_median=round(med[k], 3), ms_min=round(min(ms[k][5:]), 3),
                          ratio_to_vq=round(med[k] / med["vector_quantize_pytorch"], 3),
                          ratio_to_before=round(med[k] / med["before"], 3))))
for k, v in inner.items():
    print(k, "noise ms in step median", round(sorted(v)[len(v) // 2], 3))
