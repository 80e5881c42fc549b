"""One process, steps interleaved: GaussianMixtureVQ(32, 512) eager training steps on a (64, 32, 4, 4)
batch with the noise twin and eager forward of git revision REV ("before") and of the working tree
("after"), beside vector-quantize-pytorch's VectorQuantize. Checks first that both give the same outputs.

    python benchmarks/results/cpu-step-2026-12-02b/ab_before_after.py 3c566a7 60   # REV, rounds
"""
import json
import resource
import subprocess
import sys
import textwrap
import time

import torch

import gmvq_kernels as gk
from gmvq_kernels import eager, noise
from vector_quantize_pytorch import VectorQuantize

rev, rounds = sys.argv[1], int(sys.argv[2])


def old_source(path, start, end):
    src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    return src[src.index(start):src.index(end)]


# REV's NumPy twin (the words and transform: no Triton code) and its _EagerGMVQ.forward, run in copies
# of today's module namespaces
ns = dict(noise.__dict__)
exec(old_source("gmvq_kernels/noise.py", "# the two multiply chains of a round", "\n\n\ndef _numpy_log_is_avx512"), ns)
ens = dict(eager.__dict__)
ens["gumbel_noise"] = lambda N, K, seed, device=None: ns["gumbel_noise_numpy"](N, K, seed)
exec(textwrap.dedent(old_source("gmvq_kernels/eager.py", "    def forward(ctx, x, means",
                                "    @staticmethod\n    @torch.autograd.function.once_differentiable")), ens)
forwards = {"before": staticmethod(ens["forward"]), "after": eager._EagerGMVQ.__dict__["forward"]}

x, means, log_var = torch.randn(1024, 32), torch.randn(512, 32), torch.zeros(512)
outs = {}
for name, fwd in forwards.items():
    eager._EagerGMVQ.forward = fwd
    outs[name] = gk.gmvq(x, means, log_var, seed=5, impl="torch")
assert all(torch.equal(a, b) for a, b in zip(outs["before"], outs["after"])), "outputs differ"

torch.manual_seed(0)
latents = torch.randn(64, 32, 4, 4)
gmvq = gk.GaussianMixtureVQ(32, 512, seed=0, accept_image_fmap=True)
opt = torch.optim.Adam(gmvq.parameters(), lr=1e-3)
vq = VectorQuantize(dim=32, codebook_size=512, accept_image_fmap=True)


def make_step(q, o=None, fwd=None):
    def step():
        if fwd is not None:
            eager._EagerGMVQ.forward = fwd
        z = latents.clone().requires_grad_(True)
        quantized, _, loss = q(z)[:3]
        (quantized.square().mean() + loss.sum()).backward()
        if o is not None:
            o.step()
            o.zero_grad()
    return step


steps = {**{name: make_step(gmvq, opt, fwd) for name, fwd in forwards.items()}, "vector_quantize_pytorch": make_step(vq)}
ms, faults = {k: [] for k in steps}, {k: [] for k in steps}
for _ in range(rounds + 5):
    for k, f in steps.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        f()
        ms[k].append((time.perf_counter() - t0) * 1e3)
        faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
median = {k: sorted(v[5:])[rounds // 2] for k, v in ms.items()}
for k in steps:
    print(json.dumps(dict(variant=k, rev=rev if k == "before" else "working tree" if k == "after" else None,
                          ms_median=round(median[k], 2), ms_min=round(min(ms[k][5:]), 2),
                          faults_median=sorted(faults[k][5:])[rounds // 2],
                          ratio_to_vector_quantize_pytorch=round(median[k] / median["vector_quantize_pytorch"], 3))))
