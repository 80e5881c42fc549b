"""Measured launch configs: opt-in autotuning and the writer of ``config.TUNED``.

- ``GMVQ_AUTOTUNE=1``: the first fused call on a CUDA device per (arch, input kind, D bucket) times
  the bucket's table default and ``config.CANDIDATES`` on that call's own inputs and keeps the fastest
  for the process (``config.RUNTIME_TUNED``): a forward + backward of the training objective per
  candidate of each of ``TRAINING_KINDS`` in turn (row, then dμ's column, then q̄'s column, then the
  Δ kernel's config, half inputs only; the kinds not yet tuned at their default, those tuned at their
  winner); the encode kernel alone for
  encode candidates. It syncs the device and costs a few dozen fused calls
  plus their compiles, once per bucket; off by default, so that no call stalls or changes configs
  unasked.
- ``python benchmarks/gpu_check.py --tune`` runs the same timing at fixed shapes and writes the
  winners into config.py's TUNED block (``write_tuned``), with the date and the device.
"""
import ast
import math
import os
import re

import torch

from . import config
from .config import KernelConfig

ENV = "GMVQ_AUTOTUNE"
TRAINING_KINDS = ("row", "col", "colsum", "delta")  # the config kinds one training fwd + bwd launches
BEGIN, END = "# BEGIN TUNED\n", "# END TUNED\n"


def training_kinds(dtype: torch.dtype, D: int, device=None):
    """TRAINING_KINDS for inputs of ``dtype`` and width D on ``device``: no "delta" for fp32, which has no Δ
    config of its own (config.delta_config), nor for half inputs at D ≤ 64 (128 on sm_90 with
    GMVQ_DEFER_DQ_128=1, config.defer_dq_max_block_d), where the dx pass takes Δq
    (backward.defer_delta_q: the Δ kernel does not run when a q̄ gradient arrives, as in training)."""
    BLOCK_D = config.block_d(D)
    no_delta = dtype == torch.float32 or BLOCK_D <= config.defer_dq_max_block_d(device)
    return tuple(k for k in TRAINING_KINDS if not (no_delta and k == "delta"))


def enabled() -> bool:
    return os.environ.get(ENV, "0") == "1"


def candidates(kind: str, D: int, dtype: torch.dtype, device=None):
    """The bucket's table default (for ``device``: config.table_config) first, then the alternatives of
    config.CANDIDATES, no repeats."""
    out = [config.table_config(kind, D, dtype, device)]
    return out + [c for c in config.CANDIDATES[kind] if c not in out]


def pick_fastest(cands, time_ms):
    """(fastest config, {config: ms}) by ``time_ms(config)``; a config that does not compile or launch
    (out of shared memory or registers) gets inf. Raises when none ran, from the last config's error (a
    cause that is not the tiles', e.g. the interpreter's: config.launch_guard)."""
    times, error = {}, None
    for cfg in cands:
        try:
            times[cfg] = float(time_ms(cfg))
        except Exception as e:  # triton's OutOfResources and compile errors: this tile does not fit here
            times[cfg], error = math.inf, e
    best = min(times, key=times.get)
    if not math.isfinite(times[best]):
        raise RuntimeError(f"no candidate config ran: {list(times)}; the last one's error: {error!r}") from error
    return best, times


def cuda_ms(fn, reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream, after one untimed call (compile)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[reps // 2]


def _tune(kinds, D, x, step, time_fn):
    """Each kind in turn, the ones before it fixed at their winners: {tuned_key: (config, {config: ms})}.
    ``step``: the call to time."""
    chosen, results = {}, {}
    for kind in kinds:
        def time_cfg(cfg, kind=kind):
            with config.override(**chosen, **{kind: cfg}):
                return time_fn(step)
        best, times = pick_fastest(candidates(kind, D, x.dtype, x.device), time_cfg)
        chosen[kind] = best
        results[config.tuned_key(kind, D, x.dtype, x.device)] = (best, times)
    return results


def training_step(x, means, a, b, v, *, tau, hard, dot_precision):
    """A callable that runs the training kernels once: fwd + bwd with upstream gradients for quantized,
    latent_nll and agg_posterior, as in training, launched from the calling thread (so that
    config.override, which is per thread, reaches the backward's launches too: autograd runs a CUDA
    backward on a thread of its own)."""
    from .backward import gmvq_bwd
    from .forward import gmvq_fwd

    g = torch.Generator(device=x.device).manual_seed(0)
    grads = dict(quantized=torch.randn(x.shape, generator=g, device=x.device).to(x.dtype),
                 latent_nll=torch.randn(x.shape[0], generator=g, device=x.device),
                 agg_posterior=torch.randn(means.shape[0], generator=g, device=x.device))

    def step():
        _, saved = gmvq_fwd(x, means, a, b, v, tau=tau, hard=hard, seed=0, noise=None, dot_precision=dot_precision)
        gmvq_bwd(x, means, a, b, v, None, saved, grads, tau=tau, hard=hard, seed=0, dot_precision=dot_precision)
    return step


def tune_training(x, means, a, b, v, *, tau, hard, dot_precision, time_fn=cuda_ms):
    """The winners of each training kind for these inputs (see the module docstring), timing
    ``training_step``; ``hard`` as given (the Δ pass, where it runs at all, runs in both modes)."""
    step = training_step(x, means, a, b, v, tau=tau, hard=hard, dot_precision=dot_precision)
    return _tune(training_kinds(x.dtype, x.shape[1], x.device), x.shape[1], x, step, time_fn)


def tune_encode(x, means, a, b, *, dot_precision, time_fn=cuda_ms):
    """The encode kernel's winner for these inputs."""
    from .encode import gmvq_encode_fwd

    return _tune(("encode",), x.shape[1], x, lambda: gmvq_encode_fwd(x, means, a, b, dot_precision=dot_precision),
                 time_fn)


def ensure_tuned(kinds, x, tune):
    """With GMVQ_AUTOTUNE=1 and x on CUDA: ``tune()`` (one of the tune_* above, bound to this call's
    inputs) once for the buckets of ``kinds`` that this process has not tuned; its winners go to
    config.RUNTIME_TUNED. A no-op otherwise."""
    if not enabled() or x.device.type != "cuda":
        return
    D = x.shape[1]
    if all(config.tuned_key(k, D, x.dtype, x.device) in config.RUNTIME_TUNED for k in kinds):
        return
    for key, (cfg, _times) in tune().items():
        config.RUNTIME_TUNED[key] = cfg


_ENTRY = re.compile(r"^    (\(.*?\)): KC\((\d+), (\d+), (\d+), (\d+)(?:, maxnreg=(\d+))?\),\s+# (.*)$")


def kc_source(c: KernelConfig) -> str:
    """``c`` as config.py spells it (what _ENTRY reads back)."""
    cap = "" if c.maxnreg is None else f", maxnreg={c.maxnreg}"
    return f"KC({c.BLOCK_N}, {c.BLOCK_K}, {c.num_warps}, {c.num_stages}{cap})"


def write_tuned(path, winners, stamp: str):
    """Rewrite the TUNED block of the config.py at ``path``: its entries, updated with ``winners``
    ({tuned_key: KernelConfig}); each new entry's comment is ``stamp`` (date, device, versions)."""
    text = open(path).read()
    head, rest = text.split(BEGIN)
    _old, tail = rest.split(END)
    entries = {}
    for line in _old.splitlines():
        m = _ENTRY.match(line)
        if m:
            cap = None if m.group(6) is None else int(m.group(6))
            entries[ast.literal_eval(m.group(1))] = (KernelConfig(*map(int, m.group(2, 3, 4, 5)), cap), m.group(7))
    entries.update({key: (cfg, stamp) for key, cfg in winners.items()})
    lines = ["TUNED = {}"] if not entries else (
        ["TUNED = {"] + [f"    {key!r}: {kc_source(c)},  # {note}"
                         for key, (c, note) in sorted(entries.items(), key=lambda e: repr(e[0]))] + ["}"])
    with open(path, "w") as fh:
        fh.write(head + BEGIN + "\n".join(lines) + "\n" + END + tail)
