"""Inductor's compiled torch-op noise (what torch.compile traces on a CPU) against the CPU twin with its C
rounds at (1024, 512), interleaved in one process, median ms of 30 calls per round."""
import os
os.environ.setdefault("TRITON_INTERPRET", "0")
import time, torch
from gmvq_kernels import noise
N, K = 1024, 512
f = torch.compile(lambda seed: noise.words_to_gumbel(noise.philox_words_torch(N, K, seed)))
seed = torch.ones((), dtype=torch.int64) * 7
t0 = time.perf_counter(); a = f(seed); print("compile s", round(time.perf_counter() - t0, 1))
b = noise.gumbel_noise_numpy(N, K, 7)
print("max |diff|", float((a - b).abs().max()), "equal frac", float((a == b).float().mean()))
for rnd in range(3):
    t = {"compiled": [], "c_twin": []}
    for _ in range(30):
        t0 = time.perf_counter(); f(seed); t["compiled"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); noise.gumbel_noise_numpy(N, K, 7); t["c_twin"].append(time.perf_counter() - t0)
    print({k: round(sorted(v)[15] * 1e3, 3) for k, v in t.items()})
