"""The CPU noise at (N, K) = (1024, 512), interleaved in one process, median ms of 30 calls per round:
the twin with its C rounds, the twin with NumPy's rounds (GMVQ_C_PHILOX=0), and the words alone each way."""
import os
os.environ.setdefault("TRITON_INTERPRET", "0")
import time
import numpy as np
from gmvq_kernels import noise

N, K = 1024, 512
words = np.empty((N, K // 4, 4), dtype=np.float32)
cases = {
    "noise_c_rounds": ("1", lambda: noise.gumbel_noise_numpy(N, K, 7)),
    "noise_numpy_rounds": ("0", lambda: noise.gumbel_noise_numpy(N, K, 7)),
    "words_c_rounds": ("1", lambda: noise._philox_cpu(N, K, 7, 0, words)),
    "words_numpy_rounds": ("0", lambda: noise._philox_cpu(N, K, 7, 0, words)),
}
assert noise.c_philox() is not None
for rnd in range(3):
    t = {k: [] for k in cases}
    for _ in range(30):
        for k, (env, f) in cases.items():
            os.environ[noise.C_PHILOX_ENV] = env
            t0 = time.perf_counter(); f(); t[k].append(time.perf_counter() - t0)
    print(f"round {rnd}:", {k: round(sorted(v)[15] * 1e3, 3) for k, v in t.items()})
