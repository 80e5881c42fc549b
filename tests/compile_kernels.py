"""Compile every kernel variant the launchers issue for real GPU targets, without a GPU.

Run as a script (NOT under TRITON_INTERPRET): it records the launches of the launchers called on small
CPU tensors for a grid of options (dtype, dot precision, hard, explicit noise, which upstream gradients
arrive, D bucket, both backward variants) and compiles each distinct variant with
``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` to PTX and cubin (gmvq_kernels.devtools).
This catches what the interpreter lets through: the 16-wide dot minimum, type errors in untaken
constexpr branches, register and shared-memory overflows, and on sm_90 wgmma that ptxas serialises for
want of a non-empty loop (its warning C7515). Each arch compiles the configs a GPU of that arch gets:
sm_90 the tables' and config.TUNED's; the others the tables with their arch family's
config.ARCH_CONFIGS entries and, on a GPU with 99 KiB of shared memory per block (sm_86, sm_89, sm_120),
config.SMALL_SHARED_CONFIGS' (every build must fit that budget there); sm_10x without the lazy rescale
(config.tensor_memory_arch).
Usage: python tests/compile_kernels.py [80 86 90 ...]
"""
import concurrent.futures
import multiprocessing
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

from gmvq_kernels import backward, config, devtools, encode, forward, noise, tiles  # noqa: E402
from gmvq_kernels.spec import DIFF_OUTPUTS  # noqa: E402

ALL = DIFF_OUTPUTS
ALBO = ("quantized", "agg_posterior", "latent_nll")
Z_ONLY = ("quantized",)
# (dtype, fp32 dot precision, hard, explicit noise, D, N, K, upstream-gradient sets): every dtype,
# precision, constexpr branch, D bucket (≤64, ≤128, ≤256, ≤512) and both K tails compiled at least
# once; the full product would be hundreds of variants at seconds each. Off CUDA the launchers see one
# SM, so with the size threshold lifted (record) N = 64 (one row block) takes the split-codebook path
# (config.split_codes) and N = 512 the unsplit one: both are compiled, soft and hard, fp32 and bf16.
VARIANTS = [
    (torch.float32, "tf32x3", True, False, 64, 64, 256, [ALL, ALBO]),
    (torch.float32, "ieee", True, True, 256, 512, 250, [ALL]),
    (torch.float32, "tf32x3", False, False, 512, 64, 256, [ALL]),
    (torch.float32, "tf32", False, False, 128, 64, 256, [Z_ONLY]),
    (torch.float32, "tf32x3", False, False, 128, 512, 256, [ALBO]),
    (torch.float32, "tf32x3", True, False, 256, 64, 256, [ALBO]),
    (torch.bfloat16, "ieee", False, False, 256, 512, 256, [ALBO]),
    (torch.bfloat16, "ieee", True, False, 256, 64, 256, [ALBO]),  # hard at D = 256 keeps the soft sums
    (torch.bfloat16, "ieee", True, False, 128, 512, 256, [ALBO]),
    (torch.bfloat16, "ieee", True, False, 64, 64, 250, [ALL, ALBO]),
    (torch.bfloat16, "ieee", False, True, 512, 64, 256, [ALBO]),
    (torch.float16, "ieee", False, False, 32, 64, 256, [ALL]),
]


# a seed on the device (noise.kernel_seed loads it): once for fp32 (its Δ pass draws noise too), once bf16
SEED_VARIANTS = [VARIANTS[0], next(v for v in VARIANTS if v[0] == torch.bfloat16)]


def record(arch=None, shared=None):
    """The launches of VARIANTS with the configs a GPU of ``arch`` gets: the tables (None), on "sm_90"
    config.TUNED's measured entries first (a kernel change can push one past the shared memory), on
    another arch its family's config.ARCH_CONFIGS entries; with ``shared`` (bytes per block) below
    config.FULL_TABLE_SHARED, config.SMALL_SHARED_CONFIGS."""
    config.SPLIT_MIN_CODES = 0  # tiny shapes: split wherever the row blocks leave SMs idle
    config.arch = lambda device: arch
    config.shared_limit = lambda device: shared
    noise.seed_on_device = lambda seed: isinstance(seed, torch.Tensor)  # CPU tensors stand in for CUDA ones
    with devtools.record_launches(forward, backward, encode, noise, tiles) as log:
        for seed, dtype, prec, hard, explicit, D, N, K, grad_sets in (
                [(1, *v) for v in VARIANTS] + [(torch.tensor(1), *v) for v in SEED_VARIANTS]):
            if config.small_shared("cuda") and dtype == torch.float32 and D > config.SMALL_SHARED_MAX_FP32_D:
                continue  # refused there (config.check_shared_memory): no tile fits
            x, means = torch.randn(N, D).to(dtype), torch.randn(K, D).to(dtype)
            a, b, v = torch.rand(K), torch.randn(K), torch.rand(K)
            g = torch.randn(N, K) if explicit else None
            taus = (0.5, 1.0) if g is None else (0.5,)
            # τ = 1 with the noise drawn in the kernels takes y from q (tiles.tau_one, forward.forward_tau_one):
            # those variants too (the forward's and, with the first gradient set, the backward's)
            _, saved = forward.gmvq_fwd(x, means, a, b, v, tau=0.5, hard=hard, seed=seed, noise=g,
                                        dot_precision=prec)
            for tau in taus[1:]:
                forward.gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=seed, noise=g, dot_precision=prec)
            upstream = dict(quantized=torch.randn(N, D).to(dtype), agg_posterior=torch.randn(K),
                            **{n: torch.randn(N) for n in DIFF_OUTPUTS if n not in ("quantized", "agg_posterior")})
            # hard mode's dμ both ways: the one-hot in the loop, and after it (a codebook of at least
            # config.HARD_ROWS_MIN_BLOCKS code blocks; these have one or two)
            for min_blocks in ((10**9, 1) if hard else (10**9,)):
                backward.HARD_ROWS_MIN_BLOCKS = min_blocks
                for tau, keep in [(0.5, keep) for keep in grad_sets] + [(t, grad_sets[0]) for t in taus[1:]]:
                    backward.gmvq_bwd(x, means, a, b, v, g, saved, {n: upstream[n] for n in keep}, tau=tau,
                                      hard=hard, seed=seed, dot_precision=prec)
            encode.gmvq_encode_fwd(x, means, a, b, dot_precision=prec)  # the tokenizer kernel, same buckets
        # codebooks of 2³¹ elements or more: the row kernels' 64-bit code offsets (tiles.wide_codes), forced
        # at small shapes, half inputs with the norm dot and fp32 split over the codebook
        wide_min, tiles.WIDE_CODES_MIN = tiles.WIDE_CODES_MIN, 0
        try:
            record_training(torch.bfloat16, "ieee", True, 128, 512, 256)
            record_training(torch.float32, "tf32x3", False, 64, 64, 256)
        finally:
            tiles.WIDE_CODES_MIN = wide_min
        # GMVQ_DEFER_DQ_128=1 (config.defer_dq_max_block_d): dx takes Δq at BLOCK_D = 128, split (N = 64)
        # and not (N = 512), soft and hard
        with config.env_flag(config.DEFER_DQ_128_ENV):
            record_training(torch.bfloat16, "ieee", False, 128, 64, 256)
            record_training(torch.bfloat16, "ieee", True, 128, 512, 256)
    # the noise kernel is launched only on CUDA / interpreter: record its launches by hand, with the
    # launch options noise.gumbel_noise passes (config.FP_FUSION; without it triton 3.9 warns)
    for seed_ptr, flat in ((None, False), (torch.tensor(1), False), (None, True)):
        log.append(devtools.Launch(noise._gumbel_noise_kernel, (1,) if flat else (1, 1),
                                   (torch.empty(4, 4), 4, 4, 1, 2, seed_ptr, 0),
                                   dict(FLAT=flat, BLOCK_N=32, BLOCK_K=128, **config.FP_FUSION)))
    return log


def record_training(dtype, prec, hard, D, N, K):
    """One training fwd + bwd at τ = 1 (noise drawn in the kernels, the ALBO's gradients) and one
    tokenizer call, as the launchers issue them (inside ``record``'s recording)."""
    x, means = torch.randn(N, D).to(dtype), torch.randn(K, D).to(dtype)
    a, b, v = torch.rand(K), torch.randn(K), torch.rand(K)
    _, saved = forward.gmvq_fwd(x, means, a, b, v, tau=1.0, hard=hard, seed=1, noise=None, dot_precision=prec)
    upstream = dict(quantized=torch.randn(N, D).to(dtype), agg_posterior=torch.randn(K), latent_nll=torch.randn(N))
    backward.gmvq_bwd(x, means, a, b, v, None, saved, upstream, tau=1.0, hard=hard, seed=1, dot_precision=prec)
    encode.gmvq_encode_fwd(x, means, a, b, dot_precision=prec)


def spill_limit(launch):
    """Spill bytes (stores + loads per thread) a build may have: where a tile overflows the registers,
    ptxas falls back to 32–128 registers and tens of KB of spills, a slowdown that compiles (the tables'
    bf16 dμ at D = 256 on sm_80 until config.ARCH_CONFIGS, the half D = 512 bucket's 64-row tiles on
    sm_90, 11 KB, until 2026-12-02). The bound holds for half inputs on every arch and D, and for fp32
    up to D = 128; fp32 beyond spills up to 120 KB on some arch in every tile tried (config.py). None:
    unbounded."""
    block_d = launch.kwargs.get("BLOCK_D", 0)  # none in the noise kernel
    fp32 = "x_ptr" in launch.fn.arg_names and launch.arg("x_ptr").dtype == torch.float32
    return None if fp32 and block_d > 128 else 8192


def check_build(job):
    """Compile one (launch, arch) build and check it; an error message, or None."""
    launch, cc = job
    try:
        kernel = devtools.compile_launch(launch, cc)
        assert kernel.asm.get("cubin"), "no cubin produced"
        shared = kernel.metadata.shared
        assert shared <= devtools.SHARED_LIMIT.get(cc, 232448), f"needs {shared} B of shared memory"
        regs, spills, _, serialized = devtools.resource_usage(kernel)
        # every wgmma would wait for the one before (sm_90): C7515 has a fix (tiles.nonempty_range);
        # the register-bound kinds (C7511, C7512) are known in fp32's dμ at D = 256, a config that
        # spills anyway (config.py; half inputs at D = 512 had them too until 2026-12-02)
        assert "C7515" not in serialized, f"ptxas serialises its wgmma ({serialized})"
        limit = spill_limit(launch)
        assert limit is None or spills <= limit, (
            f"spills {spills} B at {regs} registers, over {limit} B: a tile too large for this arch's "
            f"registers (config.ARCH_CONFIGS)")
    except Exception as e:  # report every failing variant, not just the first
        return f"sm_{cc} {launch.name} {launch.kwargs}: {type(e).__name__}: {e}"[:2000]
    return None


_JOBS = []  # the builds, for the worker processes (forked: they inherit it, no pickling of JIT functions)


def _check_job(i):
    return check_build(_JOBS[i])


def main(capabilities):
    seen = set()
    small = [cc for cc in capabilities if devtools.SHARED_LIMIT.get(cc, 232448) < config.FULL_TABLE_SHARED]
    # each arch with what a GPU of that arch gets (config.ARCH_CONFIGS off sm_90; the 99 KiB parts,
    # sm_86 / sm_89 / sm_120, with config.SMALL_SHARED_CONFIGS); sm_90 with the tables and with config.TUNED
    launches = [(launch, 90) for launch in record() + record("sm_90")] if 90 in capabilities else []
    for cc in capabilities:
        if cc != 90:
            shared = devtools.SHARED_LIMIT[cc] if cc in small else None
            launches += [(launch, cc) for launch in record(f"sm_{cc}", shared)]
    for launch, cc in launches:
        key = devtools.variant_key(launch)
        if (key, cc) not in seen:  # the same variant recorded for this arch twice (tables and TUNED agree)
            seen.add((key, cc))
            _JOBS.append((launch, cc))
    # one process per core: each build is a compile and two ptxas runs, independent of the others
    workers = max(1, min(len(os.sched_getaffinity(0)), 8))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        failures = [f for f in pool.map(_check_job, range(len(_JOBS)), chunksize=4) if f]
    print(f"compiled {len(seen)} (kernel variant, arch) builds for sm_{', sm_'.join(map(str, capabilities))} (with "
          f"config.TUNED's sm_90 entries, config.ARCH_CONFIGS off sm_90 and, below {config.FULL_TABLE_SHARED} B "
          f"of shared memory, config.SMALL_SHARED_CONFIGS) in {workers} processes; {len(failures)} failed")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main([int(c) for c in sys.argv[1:]] or [80, 90]))
