"""Launch configuration and interpreter detection (one place for block sizes).

One table for half inputs and one for fp32, by D (see the comment at ROW_CONFIGS for how they were
chosen), the default heuristic. On a GPU two measured sources come first: ``TUNED`` below, written by
``benchmarks/gpu_check.py --tune`` per (arch, input kind, D bucket), and with ``GMVQ_AUTOTUNE=1`` the
winners that ``autotune.py`` times on the process's own first call per bucket. ``override`` beats all
of them (tuning runs and ``benchmarks/static_cost.py``, which models configs on a CPU, use it).
Under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``import triton``) small blocks keep the
CPU tests fast while still crossing many codebook tiles.
"""
import contextlib
import functools
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

# Triton decides at decoration time (when our kernel modules are imported) whether a @triton.jit
# function is interpreted, from this variable; reading it at the same moment keeps us in agreement.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The custom ops that draw noise (autograd's training ops, noise.gumbel_noise) turn tau and an int seed
# into launch arguments in Python, so a CUDA graph that captured them would replay the noise and the
# temperature of its capture at every step. This tag keeps them out of inductor's CUDA graphs
# (torch.compile(mode="reduce-overhead")): with graph partitioning, torch's default, they run between
# the graphs; without, the graph is not captured. (A capture by hand with a seed on the device reads
# the seed as it replays: README, "CUDA graphs".)
CUDAGRAPH_UNSAFE = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()

# Triton's interpreter keeps global state per launch: two threads launching at once raise or return wrong
# values (seen: 1.43 max difference). Interpreted launches take this lock; compiled ones run freely.
_INTERPRETER_LOCK = threading.Lock()


def launch_guard():
    """Context for a launch: the interpreter's lock under TRITON_INTERPRET=1, nothing on a GPU. Raises
    where the installed interpreter cannot run the kernels (``interpreter_incompatibility``)."""
    if not INTERPRET:
        return contextlib.nullcontext()
    problem = _installed_interpreter_incompatibility()
    if problem:
        raise RuntimeError(problem)
    return _INTERPRETER_LOCK


def _version(v: str) -> tuple:
    """(major, minor) of a version string such as '3.6.0' or '2.4.0rc1'."""
    major, minor = re.match(r"(\d+)\.(\d+)", v).groups()
    return int(major), int(minor)


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> Optional[str]:
    """Why Triton's interpreter of this version cannot run the kernels beside this NumPy, or None.
    triton 3.6's interpreter turns a loop bound that comes from ``tl.program_id`` (a 1-element array
    there) into an int with int(), which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted
    to Python scalars", deep inside a launch); triton 3.7 squeezes the array first."""
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"TRITON_INTERPRET=1: triton {triton_version}'s interpreter cannot run the kernels with "
                f"NumPy {numpy_version} (it converts 1-element arrays to int, which NumPy >= 2.4 refuses). "
                "Install numpy<2.4 or triton>=3.7, or on a CPU use impl=\"torch\" without TRITON_INTERPRET.")
    return None


@functools.cache
def _installed_interpreter_incompatibility() -> Optional[str]:
    import numpy
    import triton
    return interpreter_incompatibility(triton.__version__, numpy.__version__)


DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")
# fp32 default: tf32x3 keeps the distance dot within a few fp32 ulps (||x||²+||μ||²−2x·μ cancels
# badly for nearby points, and plain tf32's 10-bit mantissa gives ~1e-3 relative error in x·μ),
# while still running on the tensor cores. Ask for "tf32" when speed matters more than the last digits.
DEFAULT_DOT_PRECISION = "tf32x3"
# Every launch asks for FMA contraction by name (triton's enable_fp_fusion): triton 3.6–3.9 contract by
# default, but 3.9 warns at the first compile that 3.10 will not, and every kernel here was measured and
# verified with it (the static report's instruction counts count FFMAs). Contraction changes the bits
# only in the last place; the interpreter ignores it.
FP_FUSION = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class KernelConfig:
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    # ptxas's register cap per thread (triton's ``maxnreg`` launch option), or None (every table entry):
    # ptxas's own choice. A cap puts more CTAs on an SM (of 4 warps: 3 at ≤ 168 registers, 4 at ≤ 128; of
    # 8 warps: 2 at ≤ 128) for latency-bound loops, at the price of spills where the kernel does not fit
    # (benchmarks/gpu_check.py's cap_check times that)
    maxnreg: Optional[int] = None

    def launch_options(self) -> dict:
        """The launch options of a kernel taking this config: num_warps, num_stages, FP_FUSION and, if set,
        maxnreg."""
        extra = {} if self.maxnreg is None else {"maxnreg": self.maxnreg}
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, **FP_FUSION, **extra)


# GMVQ_FUSED_BACKWARD=1 chose an opt-in backward that added dx with float atomics inside the dμ pass
# until 2026-12-06. An H200 timed it no faster than the two passes (benchmarks/README.md, lever 6), and
# it faulted where D was below its tile, so it is gone; a process that still asks for it is told so.
if os.environ.get("GMVQ_FUSED_BACKWARD", "0") == "1":
    warnings.warn("gmvq_kernels: GMVQ_FUSED_BACKWARD=1 is ignored: the fused backward was removed on "
                  "2026-12-06 (it was not faster than the default two passes); the deterministic "
                  "backward runs", stacklevel=2)


@contextlib.contextmanager
def env_flag(name: str, on: bool = True):
    """Within the block the environment variable ``name`` is "1" (or "0"), process-wide: for the tests
    and the benchmarks, which time and report both variants of a kernel in one run."""
    saved = os.environ.get(name)
    os.environ[name] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


SERIAL_WGMMA_ENV = "GMVQ_SERIAL_WGMMA"


def serial_wgmma() -> bool:
    """``GMVQ_SERIAL_WGMMA=1`` (read at each call; for side-by-side timing only): the forward, dx and dμ
    kernels leave out the non-empty loop assumption (tiles.nonempty_range), as before docs/speed_history.md,
    item 20, so that ptxas serialises their wgmma again. ``speed.py`` times it as provider
    "triton_serial" beside the default, to measure what item 20 gained."""
    return os.environ.get(SERIAL_WGMMA_ENV, "0") == "1"


NORM_DOT_ENV = "GMVQ_NORM_DOT"
LAZY_RESCALE_ENV = "GMVQ_LAZY_RESCALE"


def lazy_rescale_allowed() -> bool:
    """Whether the forward may move its y sums lazily (forward.lazy_rescale_on says where), unless
    ``GMVQ_LAZY_RESCALE=0`` (read at each call; for side-by-side timing: ``speed.py``'s provider
    "triton_eager_rescale", the rescale at every tile as before docs/speed_history.md, item 25)."""
    return os.environ.get(LAZY_RESCALE_ENV, "1") != "0"


def norm_dot(dtype: torch.dtype) -> bool:
    """Whether the kernels add ||x||² + ||μ||² to the distance dot on the tensor cores (tiles.norm_parts):
    for bf16 inputs, unless ``GMVQ_NORM_DOT=0`` (read at each call; for side-by-side timing and accuracy
    checks: ``speed.py``'s provider "triton_no_norm_dot"). fp16 cannot hold the norms' range (65504), and
    fp32 inputs keep the per-element sums: their bounds are fp32-tight, and the tensor cores do not
    round their sums as IEEE fp32 does."""
    return dtype == torch.bfloat16 and os.environ.get(NORM_DOT_ENV, "1") != "0"


# the forward and dx kernels, whose (BLOCK_N, BLOCK_D) fp32 accumulator fills half the registers at 256, take
# the norm dot up to this BLOCK_D (tiles.acc_norm_operand; static report at (65536, 16384, 256) bf16 with it:
# the forward's spills 336 → 832 B, dx's 96 → 560 B, 244.0 instructions per element against 241.7)
NORM_DOT_MAX_BLOCK_D = 128

# half inputs with a q̄ gradient fold the Δ pass into the dx pass up to this BLOCK_D (backward.defer_delta_q:
# beyond it the dx kernel's second (BLOCK_N, BLOCK_D) accumulator spills)
DEFER_DQ_MAX_BLOCK_D = 64
DEFER_DQ_128_ENV = "GMVQ_DEFER_DQ_128"


def defer_dq_max_block_d(device=None) -> int:
    """The largest BLOCK_D at which the dx pass takes over the Δ pass on ``device`` (backward.defer_delta_q):
    DEFER_DQ_MAX_BLOCK_D, or 128 with ``GMVQ_DEFER_DQ_128=1`` (read at each call; for side-by-side timing:
    ``speed.py``'s provider "triton_defer_dq") on sm_90 and off CUDA (the interpreter). At BLOCK_D = 128
    that is one pass over N×K fewer for a dx that spills (static report, sm_90, bf16 at (32768, 8192,
    128): dx 45.2 → 52.9 instructions per element, 248 / 436 B spilled soft / hard, the whole fwd+bwd
    181.5 → 177.9 and 184.9 → 181.7); the H200 timed the Δ pass it saves at 0.44 of 4.62 ms there
    (2026-12-04), 2.5× its model. Only a GPU can say which wins. Ignored elsewhere: sm_80's dx at 128
    would fall back to 32 registers and 14–16 KB of spills (tests/compile_kernels.py), and at 256 even
    sm_90's spills 3.4 KB, so the flag stops at 128."""
    wide = os.environ.get(DEFER_DQ_128_ENV, "0") == "1" and arch_family(device) in (None, "wgmma")
    return 128 if wide else DEFER_DQ_MAX_BLOCK_D

# hard mode's dμ kernel adds the one-hot's terms after its loop (backward.hard_rows) from this many code
# blocks on: that second loop walks each row once per code block of BLOCK_K codes, N·BLOCK_K elements in
# all, against the main loop's N·K, at about half the main loop's instructions per tile (static report,
# bf16: 486 against 965 at (8192, 1024, 64), 564 against 1041 at (32768, 8192, 128)), so it costs about
# 30·BLOCK_K/K per element where the one-hot in the loop costs 5–7: from 8 blocks on it gains
HARD_ROWS_MIN_BLOCKS = 8


def block_d(D: int) -> int:
    """Whole latent dimension in one tile: next power of two, at least 16 (the GPU dot minimum)."""
    return max(16, 1 << (D - 1).bit_length())


_OVERRIDE = threading.local()  # per thread: a tuning run in one thread never leaks into another


@contextlib.contextmanager
def override(row: "KernelConfig" = None, col: "KernelConfig" = None, encode: "KernelConfig" = None,
             colsum: "KernelConfig" = None, delta: "KernelConfig" = None):
    """Within the block, launches in this thread use these configs for every D and dtype (tuning and
    the static cost report try alternatives this way); the defaults come back on exit."""
    saved = getattr(_OVERRIDE, "configs", {})
    given = dict(row=row, col=col, encode=encode, colsum=colsum, delta=delta)
    _OVERRIDE.configs = {**saved, **{k: v for k, v in given.items() if v is not None}}
    try:
        yield
    finally:
        _OVERRIDE.configs = saved


KC = KernelConfig
# (largest D, config) per input kind, first match wins; on sm_90 the measured TUNED entries below come
# first (an H200 timed them on 2026-11-30; e.g. 64 × 32 tiles on 4 warps at 64 < D ≤ 128). Chosen
# 2026-11-29 with benchmarks/static_cost.py (sm_90 SASS read on a CPU): the lowest modelled H200 time
# among configs whose dots are HGMMA with N ≥ 32 and that do not duplicate work across warps (one 64-row
# wgmma tile per 4 warps: BLOCK_N ≥ 16·num_warps in the row kernels, BLOCK_K ≥ 16·num_warps in the
# transposed column kernels), within an A100's 163 KiB of shared memory. Registers bound these kernels:
# BLOCK_K = 32 in the row kernels leaves room for the (BLOCK_N, BLOCK_D) accumulator. fp32 tiles take
# twice the bytes and tf32x3 splits every operand into three, hence their own, smaller table (at D = 256
# every fp32 config spills: use bf16 there for speed).
# History: (128, 64, 8 warps, 3 stages) at D ≤ 64 returned garbage quantized rows with triton 3.6 on an
# H200 (bf16/fp16; benchmarks/results/NVIDIA_H200-2026-11-27/diag_bf16_quantized.txt).
# 2026-11-30 (later): 64 < D ≤ 128 moved from (64, 32, 4) to (128, 32, 8): forward 68.8 → 65.3, dx 61.5 →
# 57.1 per element at (32768, 8192, 128) soft, no spill in either loop. D ≤ 64 keeps 64-row tiles: at
# N = 8192 (the anchor row) 128-row tiles leave half of an H200's SMs without a row block (−3.2 modelled).
# Then timed on an H200 the same day: (64, 32, 4) was 4 % faster there after all (TUNED holds it for sm_90;
# the table keeps the model's pick for other GPUs).
# 2026-12-02 (eleventh session), half inputs at 256 < D ≤ 512 (no anchor shape, never run on a GPU): the
# 64-row tiles there held a 64 × 512 fp32 accumulator on 4 warps, and on sm_90 the forward spilled 11.2
# KB per thread (76 local loads/stores per element in its loop), dx 5.7 KB (32 per element, 4 warps/SM),
# dμ 11.5 / 17.4 KB soft / hard (62 / 53) and Δ 2.4 KB. Now row (16, 32, 4, 1) (mma.sync, no wgmma: no
# 64-row accumulator), Δ (32, 64, 4, 1) and dμ (16, 16, 4, 2): 0 B but dμ's 0.5 / 0.6 KB (38 / 42 per
# element), ≥ 8 warps/SM. The static model, which prices a local load as an issue slot and not as
# memory traffic, puts them about even: at (8192, 4096, 512) 1.31 / 1.13 → 0.98 / 0.93 ms, at
# (32768, 8192, 512) 7.76 / 7.67 → 7.80 / 7.36 ms (more instructions per element, 597 → 933 soft). But
# 11 KB per thread on 128 threads is 1.4 MB a block, which no L1 holds: those spills must have gone to
# L2 on every tile (an inference; not measured). gpu_check.py checks D = 512 against float64 and times
# new against old (d512_check) on the next GPU run.
ROW_CONFIGS = {
    "half": ((64, KC(64, 32, 4, 2)), (128, KC(128, 32, 8, 2)), (256, KC(128, 32, 8, 2)), (512, KC(16, 32, 4, 1))),
    "fp32": ((64, KC(64, 32, 4, 1)), (128, KC(64, 16, 4, 1)), (256, KC(16, 32, 4, 1)), (512, KC(16, 16, 4, 1))),
}
COL_CONFIGS = {  # half: three buckets to D = 256 with one tile, so that ARCH_CONFIGS can tell them apart
    "half": ((64, KC(32, 128, 8, 2)), (128, KC(32, 128, 8, 2)), (256, KC(32, 128, 8, 2)), (512, KC(16, 16, 4, 2))),
    "fp32": ((64, KC(32, 128, 8, 2)), (128, KC(32, 64, 4, 1)), (256, KC(16, 64, 4, 1)), (512, KC(16, 16, 4, 1))),
}
# The q̄ kernel (column sums of q) holds no (BLOCK_K, BLOCK_D) accumulator, so it takes wider tiles than
# dμ: chosen 2026-11-30 with benchmarks/static_cost.py (bf16, against dμ's (32, 128, 8, 2): 16.9 → 10.7
# instructions per element at D = 64, 20.1 → 11.6 at 128, 26.1 → 17.2 at 256 (64 × 256 there: 512
# codes would need more shared memory than an A100's 163 KiB), the per-tile overhead spread over 4–8×
# the elements; fp32 (tf32x3) at D = 64: 27.0 → 23.5, its wider tiles exceeding an A100's shared memory).
# D = 256 since 2026-12-01 (fifth session): (128, 128, 8, 2), as the norm dot's operands (docs/speed_history.md,
# item 23) took (64, 256, 8, 2) to 175104 B of shared memory on sm_80, past an A100's 163 KiB; at
# (65536, 16384, 256) 11.9 instructions per element against 11.1, modelled 0.56 against 0.68 ms (140 KB).
COLSUM_CONFIGS = {
    "half": ((128, KC(64, 512, 8, 2)), (256, KC(128, 128, 8, 2)), (512, KC(32, 64, 4, 1))),
    "fp32": ((64, KC(64, 128, 8, 2)), (128, KC(32, 64, 4, 1)), (256, KC(16, 64, 4, 1)), (512, KC(16, 16, 4, 1))),
}
# The Δ kernel (a row kernel: Δq, and Δy where it recomputes y) holds no (BLOCK_N, BLOCK_D) accumulator
# either, so it takes wider tiles than the forward and dx: chosen 2026-11-30 with benchmarks/static_cost.py
# (bf16, against the row table's): 21.7 → 16.0 instructions per element at (32768, 8192, 128) soft,
# 16.9 → 13.6 at (8192, 1024, 64) hard, 14.9 → 12.5 at (8192, 262144, 32) hard, 57.0 → 53.3 at
# (65536, 16384, 256) hard (its full recompute of y); (128, 128, 8, 2) is 0.7–0.9 lower at D ≤ 128 with
# 182–255 registers and spills 788 B at D = 256. fp32 inputs keep the row kernels' tiles (delta_config).
DELTA_CONFIGS = {  # one bucket per D range, as the row table's, so that tuning can tell them apart
    "half": ((64, KC(128, 64, 8, 2)), (128, KC(128, 64, 8, 2)), (256, KC(128, 64, 8, 1)), (512, KC(32, 64, 4, 1))),
    "fp32": ROW_CONFIGS["fp32"],  # unused: see delta_config
}
# D = 256 since 2026-12-04 (thirty-sixth session): (128, 64, 8, 1), two CTAs per SM (128 registers, 104448 B
# each) since the pass of Δq alone takes the halved distances and reads Δy's sums in chunks after its loop
# (backward.py); (128, 64, 8, 2) needs 139264 B, one CTA per SM.
# The encode kernel (codes only) holds no (BLOCK_N, BLOCK_D) accumulator and no softmax state, so it
# takes wider tiles than the row kernels. Chosen 2026-11-29 with benchmarks/static_cost.py --modes encode
# (lowest modelled time among the configs with no spill, every dot an HGMMA with N ≥ 32, within an
# A100's shared memory; ≥ 16 resident warps/SM preferred where the model saw < 15 % between them). fp32
# (tf32x3) spills at D ≥ 256 in every config tried: use bf16 there.
ENCODE_CONFIGS = {
    "half": ((128, KC(128, 64, 8, 2)), (256, KC(128, 64, 8, 1)), (512, KC(128, 32, 8, 1))),
    "fp32": ((64, KC(128, 64, 8, 2)), (128, KC(128, 32, 8, 1)), (256, KC(64, 16, 4, 1)), (512, KC(16, 16, 4, 1))),
}
# D = 256 since 2026-12-04 (thirty-sixth session): (128, 64, 8, 1), two CTAs per SM (128 registers, 104448 B
# of shared memory each: 16 warps/SM) since the halved distances left x in shared memory (encode.py);
# (256, 64, 8, 1) 155 registers and 156672 B, (128, 64, 8, 2) 139264 B: 8 warps/SM.
INTERPRET_CONFIG = KC(16, 16, 1, 1)
TABLES = {"row": ROW_CONFIGS, "col": COL_CONFIGS, "colsum": COLSUM_CONFIGS, "delta": DELTA_CONFIGS,
          "encode": ENCODE_CONFIGS}
# GPUs whose blocks get 99 KiB of shared memory (sm_86, sm_89, sm_120: the RTX 30, 40 and 50 series, A10,
# A40, L4, L40S) cannot load the tables' tiles in the buckets below: sm_86 builds of
# tests/compile_kernels.py's variants took up to 166912 B there, an A100's whole budget, and failed to
# launch (triton's OutOfResources). Where a device allows less than FULL_TABLE_SHARED bytes per block
# (``small_shared``), these entries replace the tables' (TUNED's are sm_90's and never apply there): per
# bucket, the first config of a fixed ladder (one stage, then narrower tiles) whose sm_86 build fits
# SMALL_SHARED in every variant compiled (benchmarks/fit_shared.py). Searched on 2026-12-01 by compiling
# on a CPU (triton 3.7.1); untimed on such a GPU (GMVQ_AUTOTUNE=1 times the candidates that fit there).
FULL_TABLE_SHARED = 166912  # an A100's per-block limit, which the tables were chosen within
SMALL_SHARED = 101376
# fp32 inputs at D > 256 do not fit: their row kernels took 163840 B at (16, 16, 4, 1), the smallest
# tile tried, so gmvq refuses them on such a GPU (check_shared_memory) rather than fail to launch
SMALL_SHARED_MAX_FP32_D = 256
SMALL_SHARED_CONFIGS = {  # (input kind, kernel kind, largest D of the bucket): config; the table's, then B
    ("half", "colsum", 128): KC(64, 256, 8, 1),  # (64, 512, 8, 2): 166912 B
    ("half", "colsum", 256): KC(128, 128, 8, 1),  # (128, 128, 8, 2): 140288 B
    ("fp32", "colsum", 256): KC(16, 16, 4, 1),  # (16, 64, 4, 1): 139264 B
    ("fp32", "encode", 128): KC(64, 32, 4, 1),  # (128, 32, 8, 1): 135168 B
    ("fp32", "encode", 256): KC(16, 16, 4, 1),  # (64, 16, 4, 1): 139264 B
}
# Where the tables' tiles overflow the registers of another kind of GPU: per arch family (arch_family:
# "mma" for sm_8x and sm_12x, whose tensor cores take mma.sync and whose accumulators live in
# registers as on sm_90 but without wgmma; "tmem" for sm_10x), the config that family's GPUs take
# instead. The tables were chosen from sm_90 SASS, and compiled for sm_80 (2026-12-02, on a CPU, not
# run; triton 3.7.1) the bf16 forward's and dx's 8-warp tiles at D = 256 got 128 registers and 5–15 KB
# of spills per thread (spills = stores + loads), fp32's at D = 128 128–168 registers and 5–6 KB, and
# the bf16 dμ at D ≥ 256, the bf16 forward at D = 512 and fp32's dμ at D ≥ 128 fell back to 32
# registers and 18–113 KB (loads and stores of local memory are then half of the loop's
# instructions). Each entry is the config with the lowest static-model time (benchmarks/static_cost.py
# --arch 80: sm_80 counts at the H200's rates, a comparison, not an A100 estimate), soft and hard,
# among 4–8 tried that fit 99 KiB of shared memory, at (65536, 16384, 256), (32768, 8192, 512) and,
# for fp32, (32768, 8192, 128): per kind's kernels, soft / hard, table → entry:
#   half row 256: forward 10.9 / 11.6 → 5.2 / 5.6 ms, dx 6.1 / 6.7 → 3.3 / 3.5 (the whole fwd+bwd
#     with the col entry too: 37.5 / 37.6 → 14.9 / 15.0, benchmarks/results/static-2026-12-02-sm80/);
#   half col 256: dμ 19.3 / 18.2 → 5.4 / 4.7 (583 → 162 instructions per element, soft);
#   half row 512: forward 5.9 / 0.7 → 2.3 / 1.1, dx 4.2 / 4.4 → 2.0 / 2.1;
#   half col 512: dμ 13.1 / 11.4 → 3.6 / 3.4 ((32, 16, 4, 1): 3.3 / 3.9, but 115 KB of shared memory);
#     since 2026-12-02 (eleventh session) the table's own tile for every GPU (above ROW_CONFIGS), so the
#     entry went;
#   fp32 row 128 (tf32x3; also its Δ pass): forward 3.5 / 1.1 → 2.0 / 2.1, dx 7.8 / 7.9 → 1.9 / 1.9;
#   fp32 col 64 (tf32x3): triton 3.6 compiled the table's (32, 128, 8, 2) for sm_80 at 32 registers
#     and 24–26 KB of spills (3.7.1: 255, 2.4 KB); the entry takes 255 and ≤ 2.6 KB in both. dμ at
#     (32768, 8192, 64) 2.4 / 1.8 → 2.0 / 1.5; fwd+bwd at (8192, 1024, 64) 0.27 / 0.23 either way,
#     at (8192, 262144, 32) 27.7 / 24.2 → 28.0 / 24.4 (3.7.1);
#   fp32 col 128 (tf32x3): dμ 7.1 / 5.5 → 3.4 / 2.7 with (32, 32, 4, 2); since tiles.mma spells tf32x3 out
#     (2026-12-05) that tile fell back to 32 registers and 20 KB of spills in soft mode, and (32, 16, 4, 2)
#     took its place: fwd+bwd at (32768, 8192, 128), soft / hard, 1251 / 1200 instructions per element
#     before tiles.mma → 1099 / 1057 (dμ 387 / 329, 424 / 624 B of spills); ranked with tiles.mma's first,
#     truncating split: (32, 16, 4, 2) 988 / 904, (16, 16, 4, 1) 1150 / 1080, (16, 32, 4, 2) 1794 / 1014;
#   fp32 row 64 (tf32x3, new then): the table's (64, 32, 4, 1) left dx at 32 registers and 18–20 KB of
#     spills; (64, 16, 4, 1) 495 / 432 per fwd+bwd at (32768, 8192, 64) against 649 / 538 before
#     tiles.mma (with the truncating split 450 / 398; (32, 32, 4, 1) 559 / 515, (32, 16, 4, 1) 729 / 623);
#   fp32 col 256: dμ 162 → 101 ms tf32x3, 62 → 13 tf32 (soft; in hard mode with the one-hot after the
#     loop the entry takes 255 registers and 3.0 KB of spills; soft tf32x3 still 17 KB at 32 registers,
#     and no tile tried did better: (32, 16, 4), (16, 16, 2), (16, 32, 2), (16, 16, 8): 13–76 KB).
#   half encode 256 and 512 (2026-12-04, thirty-sixth session, after the encode kernel's halved distances;
#     sm_80, bf16, per element at (8192, 16384, 256) and (8192, 4096, 512)): the table's (128, 64, 8, 1)
#     23.2 with 748 B of spills and (128, 32, 8, 1) 36.6 with 488 B (before that change the old tables'
#     17.6 with 972 B and 29.3 with 140 B); the entries 18.3 and 29.1, no spill, 16 and 8 warps/SM, and
#     they fit the 99 KiB parts (87040 and 101376 B), whose SMALL_SHARED_CONFIGS entries took 33.8 at D = 512.
#   half col 128 (2026-12-06, fifty-first session, after dμ took its rows' values from one record,
#     docs/speed_history.md, item 38; sm_80, bf16, τ = 1, per element at (32768, 8192, 128), soft / hard):
#     the table's (32, 128, 8, 2) left soft dμ at 32 registers and 14.5 KB of spills, 246 per element
#     (before item 38 already 128 registers and 3.1 KB, 120); the entry 77.8 / 72.8 with none, per
#     fwd+bwd 237.3 / 241.7 against 279.8 / 253.5 before item 38; (32, 128, 8, 1) 88.2 / 80.4 (120 B),
#     (32, 64, 4, 2) 117 / 108 (904 / 1048 B), (32, 64, 4, 1) 120 / 112 (1000 / 1448 B). The half col
#     table's D ≤ 64 bucket keeps the table's tile there (65.8 / 64.9 at (8192, 1024, 64), no spill;
#     the entry 68.8 / 69.4). Reports: benchmarks/results/static-2026-12-06-rowrecord/sm80/.
# The "mma" entries fit the 99 KiB parts (sm_86, sm_89, sm_120; tests/compile_kernels.py 86 checks it),
# so they come before SMALL_SHARED_CONFIGS, which holds only buckets without one. "tmem": triton 3.8's
# ptxas for sm_100 refused fp32's (tf32x3) dμ at D = 256 in the table's (16, 64, 4, 1) ("Register
# allocation failed with register count of '255'"); (16, 16, 4, 1) compiles there with 255 registers and
# 2.3–3.4 KB of spills (triton 3.7.1 and 3.8). Other sm_100 buckets compile with the tables' bf16 tiles
# without such spills (their accumulators live in tensor memory). sm_90 keeps the tables, where the
# static model has these tiles slower (e.g. fp32 at D = 256: 105.6 against 94.6 ms tf32x3, 33.0 against
# 26.1 tf32, soft fwd+bwd). Not yet improved (spill > 8 KB on sm_80 / sm_100): fp32 at D = 512, and
# fp32 with dot_precision="ieee" at D = 256.
ARCH_CONFIGS = {  # (arch family, input kind, kernel kind, largest D of the bucket): config
    ("mma", "half", "row", 256): KC(64, 32, 4, 1),
    ("mma", "half", "col", 128): KC(16, 128, 8, 2),
    ("mma", "half", "col", 256): KC(64, 32, 4, 2),
    ("mma", "half", "row", 512): KC(32, 16, 4, 1),
    ("mma", "fp32", "row", 64): KC(64, 16, 4, 1),
    ("mma", "fp32", "col", 64): KC(32, 64, 4, 1),
    ("mma", "fp32", "row", 128): KC(32, 32, 4, 1),
    ("mma", "fp32", "col", 128): KC(32, 16, 4, 2),
    ("mma", "fp32", "col", 256): KC(16, 16, 4, 1),
    ("mma", "half", "encode", 256): KC(128, 32, 8, 2),
    ("mma", "half", "encode", 512): KC(64, 32, 4, 2),
    ("tmem", "fp32", "col", 256): KC(16, 16, 4, 1),
}
# Alternatives a tuning run times beside each bucket's default (autotune.candidates): tile shapes whose
# sm_90 code the static report found spill-free or nearly so at some D; one that does not fit a
# bucket fails to compile or runs slowly, and the timing drops it. The row kernels' one-stage tiles were
# added on 2026-11-30 (later): without the prefetch's registers dx at D = 128 took 49.6 instead of 54.3
# instructions per element and at D = 256 spilled 68 instead of 76 B, while loads wait on memory, which
# the model does not see. Most of that gap was ptxas serialising the two-stage dx's wgmma (the one-stage
# loops never were); since docs/speed_history.md, item 20: 51.5 against 52.7.
# Untimed so far.
CANDIDATES = {
    "row": (KC(64, 32, 4, 2), KC(128, 32, 8, 2), KC(64, 64, 4, 2), KC(64, 16, 4, 2), KC(128, 16, 8, 1),
            KC(64, 32, 4, 1), KC(128, 32, 8, 1)),
    "col": (KC(32, 128, 8, 2), KC(32, 64, 4, 2), KC(16, 128, 8, 2), KC(32, 128, 8, 1), KC(64, 64, 4, 1)),
    # (64, 128, 8, 1): two CTAs per SM at D = 256 (81 registers), 7 % more instructions; (64, 256, 8, 1): two
    # at D ≤ 128 (112–127 registers against 205–215), +0.2 to +0.5 per element (static report, 2026-12-05)
    "colsum": (KC(64, 512, 8, 2), KC(64, 256, 8, 2), KC(32, 128, 8, 2), KC(64, 128, 8, 2), KC(128, 256, 8, 2),
               KC(64, 128, 8, 1), KC(64, 256, 8, 1)),
    "delta": (KC(128, 64, 8, 2), KC(128, 128, 8, 2), KC(64, 64, 4, 2), KC(64, 32, 4, 2), KC(128, 32, 8, 2)),
    "encode": (KC(128, 64, 8, 2), KC(128, 64, 8, 1), KC(256, 64, 8, 1), KC(128, 32, 8, 1), KC(64, 64, 4, 2),
               KC(128, 128, 8, 1)),
}

# Measured winners of `python benchmarks/gpu_check.py --tune` (autotune.write_tuned rewrites the block
# between the markers), used before the tables on a GPU of the same arch. Key: (arch, "half" | "fp32",
# kind, largest D of the bucket, as in the tables); each entry's comment names its date and device.
# Removed by hand on 2026-11-30 (later), after ||x||² became a saved (N,) vector and the kernels stopped
# forming it from their x tiles (x then reaches the dots through shared memory): three half-input winners
# at D = 256. The colsum (128, 256, 8, 2) and Δ (128, 128, 8, 2) configs need more than sm_90's 227 KiB
# of shared memory (Δ in hard mode); the tables' configs timed within 0.2 % and 1.4 % of them in the same
# tuning run (whole fwd+bwd, bf16 soft). With the row winner (64, 32, 4, 2) dx now spills 644 B, 5 local
# loads/stores per element in its loop (static report; 76 B and 0.4 with the table's (128, 32, 8, 2)),
# where it was 1.5 % faster than the table before the change. The next --tune run re-times all three.
# Removed by hand on 2026-12-04 (thirty-sixth session): the half encode winner at D = 256, (128, 64, 8, 2),
# timed before ||x||² moved out of the kernels; since then it holds one CTA per SM (139264 B of shared
# memory), and the H200 timed the encode path 24 % slower at (65536, 16384, 256) on 2026-12-04 than on
# 2026-11-30. The table's (128, 64, 8, 1) holds two (16 warps/SM; see ENCODE_CONFIGS).
# All entries were timed while ptxas serialised the dx and dμ kernels' wgmma (docs/speed_history.md, item 20,
# fixed 2026-12-01), so the next --tune may pick differently (the one-stage candidates too).
# tests/compile_kernels.py compiles the TUNED entries for sm_90 too.
# BEGIN TUNED
TUNED = {
    ('sm_90', 'fp32', 'col', 128): KC(32, 128, 8, 1),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'col', 64): KC(32, 128, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'colsum', 128): KC(64, 128, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'colsum', 64): KC(128, 256, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'encode', 128): KC(128, 64, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'encode', 64): KC(128, 128, 8, 1),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'row', 128): KC(64, 32, 4, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'fp32', 'row', 64): KC(64, 32, 4, 1),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'col', 256): KC(32, 128, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'colsum', 128): KC(64, 512, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'delta', 128): KC(128, 64, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'encode', 128): KC(128, 64, 8, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'row', 128): KC(64, 32, 4, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
    ('sm_90', 'half', 'row', 64): KC(64, 32, 4, 2),  # 2026-11-30, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
}
# END TUNED
# GMVQ_AUTOTUNE=1: this process's own winners (autotune.ensure_tuned), same keys; used before TUNED
RUNTIME_TUNED = {}


def dtype_kind(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "half"


def _table_row(kind: str, D: int, dtype: torch.dtype):
    """(largest D, config) of the table row of ``kind`` that serves D for this input dtype."""
    rows = TABLES[kind][dtype_kind(dtype)]
    return next((row for row in rows if D <= row[0]), rows[-1])


def bucket(kind: str, D: int, dtype: torch.dtype):
    """(input kind, largest D) of the table row that serves D: the unit of tuning."""
    return dtype_kind(dtype), _table_row(kind, D, dtype)[0]


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


@functools.lru_cache(maxsize=None)
def _cuda_shared_limit(index: int) -> Optional[int]:
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if limit is None:  # a torch without the property: the 99 KiB parts by compute capability
        return SMALL_SHARED if (props.major, props.minor) in ((8, 6), (8, 9)) or props.major == 12 else None
    return int(limit)


def _cuda_index(device) -> Optional[int]:
    """The CUDA device index of ``device`` (a device, a string or None), None off CUDA."""
    if device is None:
        return None
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def shared_limit(device) -> Optional[int]:
    """Bytes of shared memory one block may use on ``device`` (opted in); None off CUDA."""
    index = _cuda_index(device)
    return None if index is None else _cuda_shared_limit(index)


def small_shared(device) -> bool:
    """Whether ``device`` takes SMALL_SHARED_CONFIGS (less shared memory per block than the tables need)."""
    limit = shared_limit(device)
    return limit is not None and limit < FULL_TABLE_SHARED


def check_shared_memory(dtype: torch.dtype, D: int, device) -> None:
    """A clear error where no tile fits the device (fp32 at D > SMALL_SHARED_MAX_FP32_D on a GPU with
    99 KiB per block), instead of triton's OutOfResources at the first launch."""
    if dtype == torch.float32 and D > SMALL_SHARED_MAX_FP32_D and small_shared(device):
        raise ValueError(f"x: fp32 latents with D > {SMALL_SHARED_MAX_FP32_D} need more shared memory per block "
                         f"than this GPU allows ({shared_limit(device)} B); got D = {D}. Pass bf16 or fp16 "
                         f"latents, or use impl='torch'")


def arch(device) -> Optional[str]:
    """"sm_90" for a CUDA device of compute capability 9.0 (looked up once per device: config picks run
    at every launch); None off CUDA (no tuned entries apply)."""
    index = _cuda_index(device)
    return None if index is None else _cuda_arch(index)


def arch_family(device) -> Optional[str]:
    """The kind of tensor cores of a CUDA ``device``, which decides how much of a tile fits its registers
    (ARCH_CONFIGS): "wgmma" (sm_90, the tables' arch), "tmem" (sm_10x: accumulators in tensor memory),
    "mma" (every other: sm_8x, sm_12x); None off CUDA (the tables)."""
    return _family(arch(device))


def _family(name: Optional[str]) -> Optional[str]:
    """``arch_family`` of an arch name ("sm_86") or None."""
    if name is None:
        return None
    major = int(name[3:-1])  # "sm_86" → 8, "sm_100" → 10
    return "wgmma" if major == 9 else "tmem" if major == 10 else "mma"


def tensor_memory_arch(device) -> bool:
    """Whether ``device`` is a Blackwell datacenter GPU (compute capability 10.x), where triton keeps MMA
    accumulators in tensor memory. Its layout pass (TritonNvidiaGPUOptimizeTMemLayoutsPass, triton
    3.7.1) crashed on the forward's lazy rescale (5 of 206 sm_100 builds, tests/compile_kernels.py
    100), so the forward rescales at every tile there (forward.lazy_rescale_on)."""
    return arch_family(device) == "tmem"


def tuned_key(kind: str, D: int, dtype: torch.dtype, device):
    """(arch, input kind, kernel kind, largest D of the bucket): the key of TUNED and RUNTIME_TUNED."""
    kind_dt, limit = bucket(kind, D, dtype)
    return (arch(device), kind_dt, kind, limit)


def _pick(kind: str, D: int, dtype: torch.dtype, device) -> KernelConfig:
    # at every launch: the arch and table row looked up once (host time per call; speed.py --host-cpu)
    configs = getattr(_OVERRIDE, "configs", {})
    if kind in configs:
        return configs[kind]
    if INTERPRET:
        return INTERPRET_CONFIG
    name = arch(device)
    limit, config = _table_row(kind, D, dtype)
    key = (dtype_kind(dtype), kind, limit)
    found = (RUNTIME_TUNED.get((name, *key)) or TUNED.get((name, *key))) if name is not None else None
    return found if found is not None else _table_config(key, config, name, device)


def table_config(kind: str, D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """The default heuristic: the table row of ``kind`` that serves D for this input dtype, or on a CUDA
    ``device`` its arch family's ARCH_CONFIGS entry where the bucket has one, else on a device with less
    shared memory its SMALL_SHARED_CONFIGS entry."""
    limit, config = _table_row(kind, D, dtype)
    return _table_config((dtype_kind(dtype), kind, limit), config, arch(device), device)


def _table_config(key, config: KernelConfig, name: Optional[str], device) -> KernelConfig:
    """``table_config`` of the bucket ``key`` = (input kind, kind, largest D) whose table row is ``config``,
    on ``device`` of arch ``name`` (``arch(device)``)."""
    own = ARCH_CONFIGS.get((_family(name), *key))
    if own is not None:
        return own
    return SMALL_SHARED_CONFIGS.get(key, config) if small_shared(device) else config


def row_config(D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """Row-block kernels (forward, backward dx, delta): one program owns BLOCK_N rows, streams K.
    ``device``: where the launch runs (tuned entries apply on CUDA devices of their arch)."""
    return _pick("row", D, dtype, device)


def col_config(D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """The backward's column-block kernel (dμ): one program owns BLOCK_K codes, streams a row range."""
    return _pick("col", D, dtype, device)


def colsum_config(D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """The forward's column-block kernel (q̄ = column sums of q), laid out as dμ's."""
    return _pick("colsum", D, dtype, device)


def delta_config(D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """The backward's Δ kernel (a row kernel without a D-wide accumulator), for half inputs. fp32 inputs
    take the row kernels' config: their Δ pass recomputes y and Y, and Y − Δy must then cancel exactly
    in dx (backward.py's docstring), so both must come from the same tiles, bit for bit."""
    return _pick("delta", D, dtype, device) if dtype != torch.float32 else row_config(D, dtype, device)


def encode_config(D: int, dtype: torch.dtype, device=None) -> KernelConfig:
    """The encode kernel (codes only): one program owns BLOCK_N rows, streams K."""
    return _pick("encode", D, dtype, device)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 1 off CUDA (the interpreter still exercises the row splits;
    benchmarks/static_cost.py patches this to model a real GPU)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def split_rows(N: int, num_col_blocks: int, BLOCK_N: int, device: torch.device):
    """(splits, rows_per_split) for the column kernels, so that small K still fills the GPU.

    Each split writes its own partial sums (splits, K[, D]) that torch adds up afterwards:
    deterministic, no atomics, and the extra memory is bounded by about 2·SMs·BLOCK_K·D floats,
    independent of N and K."""
    target = 2 * sm_count(device)
    splits = max(1, -(-target // num_col_blocks))
    rows = -(-N // splits)
    rows_per_split = -(-rows // BLOCK_N) * BLOCK_N
    return -(-N // rows_per_split), rows_per_split


# The training kernels split the codebook only into parts of at least this many codes. Timed on an H200
# (2026-11-30, bf16 fwd+bwd, split against not split): a split of 8192 codes or fewer was 25–35 % slower
# (N = 8192, K = 4096 and 16384; N = 4096, K = 16384, D = 128: the partial sums and the merge cost more
# than the idle SMs lose), one of 16384 or more 25–74 % faster (N = 2048–8192, K = 65536–262144, D = 32–128).
SPLIT_MIN_CODES = 16384


def split_codes(N: int, K: int, BLOCK_N: int, BLOCK_K: int, device: torch.device, min_codes=None):
    """(splits, codes_per_split) for the row kernels that can split the codebook (split-K): when few
    row blocks would leave the GPU idle (small N, e.g. N = 8192 against 132 SMs), each row block's
    codes are split across up to 2·SMs / row blocks programs, in whole BLOCK_K tiles. Their partial
    results (O(splits·N) or O(splits·N·D), at most ~2·SMs·BLOCK_N rows) are reduced by torch in a
    fixed order: deterministic. Each split streams at least ``min_codes`` codes (default
    SPLIT_MIN_CODES; 0: no limit)."""
    row_blocks = -(-N // BLOCK_N)
    k_tiles = -(-K // BLOCK_K)
    splits = min(k_tiles, max(1, 2 * sm_count(device) // row_blocks))
    min_codes = SPLIT_MIN_CODES if min_codes is None else min_codes
    if min_codes > 0:
        splits = max(1, min(splits, K // min_codes))
    codes_per_split = -(-k_tiles // splits) * BLOCK_K
    return -(-K // codes_per_split), codes_per_split


# The eager CPU paths (impl="torch", eager.py, what impl="auto" runs there; and the reference on a CPU,
# reference.reference_forward_blocks) take a training batch in row blocks of about this many (n, k)
# elements: a block's (rows, K) temporaries stay in cache. Timed for the reference on this project's
# 2-core CPU (2026-11-30, torch 2.13, one training step of the module at N = 1024, D = 32, median ms,
# whole batch → blocks, steps interleaved): K = 512 11.0 → 11.2 and 13.2 → 12.6, K = 2048 42.3 → 35.2,
# K = 8192 239 → 137. Rows per block (32 to 1024, runs one after another): 128 best at K = 2048 and
# 8192, 256–512 at K = 512; each block costs ~0.6 ms of torch calls, so at K = 128 blocks of 512 rows
# were slower (2.5 → 3.2 ms): hence at least REFERENCE_MIN_ROWS rows. For the "torch" path 2¹⁷ and
# 2¹⁸ elements were within noise at K = 512 and 2048, and its floor is EAGER_MIN_ROWS: at K = 8192
# (blocks of 32 or 64 rows against 128) its step took 79–81 against 84–88 ms (interleaved, two runs).
REFERENCE_BLOCK_ELEMS = 2 ** 18
REFERENCE_MIN_ROWS = 128
EAGER_MIN_ROWS = 64
# impl="torch" with its per-element work in C (cpu_rows.py): the C passes make no (rows, K) temporaries
# beyond the tensors a block keeps for its backward, so larger blocks cost little memory (with a
# backward, only its backward's e beyond what the batch keeps anyway; without, one block's ~2 tensors
# of 4 MiB in fp32), and take fewer, larger products and fewer Python calls. (Measured when a block
# also kept q and made its noise, before the twenty-third session:)
# Fwd+bwd of the op against 2¹⁸ (2026-12-03, the AVX-512 VM, interleaved, median of 15):
# (N, K) = (1024, 512) 5.98 → 5.67 ms, (4096, 512) 20.4 → 18.4, (2048, 2048) 53.8 → 44.8 (2²¹: 42.0).
EAGER_C_BLOCK_ELEMS = 2 ** 20


def reference_rows(N: int, K: int, min_rows: Optional[int] = None, elems: Optional[int] = None) -> int:
    """Rows per block of the eager CPU paths (N itself: one block): about ``elems`` (n, k) elements
    (REFERENCE_BLOCK_ELEMS by default), at least ``min_rows`` (REFERENCE_MIN_ROWS by default)."""
    return max(REFERENCE_MIN_ROWS if min_rows is None else min_rows,
               (REFERENCE_BLOCK_ELEMS if elems is None else elems) // max(K, 1))
