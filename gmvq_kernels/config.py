"""Launch configuration and interpreter detection (one place for block sizes).

Configs are bucketed by the tile width in bytes (fp32 tiles count double). They were checked for
correctness and timed on one NVIDIA H200 (torch 2.11, triton 3.6.0, 2026-11-27), but not yet tuned:
see benchmarks/README.md. There is no autotuning; benchmarks/gpu_check.py --tune times alternatives
through ``override``.
Under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``import triton``) small blocks keep the
CPU tests fast while still crossing many codebook tiles.
"""
import contextlib
import os
import threading
from dataclasses import dataclass

import torch

# Triton decides at decoration time (when our kernel modules are imported) whether a @triton.jit
# function is interpreted, from this variable; reading it at the same moment keeps us in agreement.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")
# fp32 default: tf32x3 keeps the distance dot within a few fp32 ulps (||x||²+||μ||²−2x·μ cancels
# badly for nearby points, and plain tf32's 10-bit mantissa gives ~1e-3 relative error in x·μ),
# while still running on the tensor cores. Ask for "tf32" when speed matters more than the last digits.
DEFAULT_DOT_PRECISION = "tf32x3"


@dataclass(frozen=True)
class KernelConfig:
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int


def block_d(D: int) -> int:
    """Whole latent dimension in one tile: next power of two, at least 16 (the GPU dot minimum)."""
    return max(16, 1 << (D - 1).bit_length())


_OVERRIDE = threading.local()  # per thread: a tuning run in one thread never leaks into another


@contextlib.contextmanager
def override(row: "KernelConfig" = None, col: "KernelConfig" = None):
    """Within the block, launches in this thread use these configs for every D and dtype (tuning and
    the static cost report try alternatives this way); the defaults come back on exit."""
    saved = getattr(_OVERRIDE, "configs", {})
    _OVERRIDE.configs = {**saved, **{k: v for k, v in (("row", row), ("col", col)) if v is not None}}
    try:
        yield
    finally:
        _OVERRIDE.configs = saved


def _tile_width(D: int, dtype: torch.dtype) -> int:
    """BLOCK_D in 2-byte units: shared memory is what limits the tiles, and fp32 tiles take twice the
    bytes of bf16 ones (seen on an H200: fp32 at the bf16 configs asked for up to 356 KiB of 227)."""
    return block_d(D) * max(1, dtype.itemsize // 2)


KC = KernelConfig
# (largest tile width in 2-byte units, config), first match wins; the last row takes everything wider.
# Chosen 2026-11-29 with benchmarks/static_cost.py (sm_90 SASS read on a CPU, not timed on a GPU): the
# lowest modelled H200 time at the anchor shapes among configs whose dots are HGMMA with N ≥ 32 and
# that do not duplicate work across warps (a 64-row wgmma tile per 4 warps: BLOCK_N ≥ 16·num_warps for
# the row kernels, BLOCK_K ≥ 16·num_warps for the transposed column kernels). Registers bound these
# kernels: BLOCK_K = 32 in the row kernels leaves room for the (BLOCK_N, BLOCK_D) accumulator.
# History: (128, 64, 8 warps, 3 stages) at ≤ 64 returned garbage quantized rows with triton 3.6 on an
# H200 (bf16/fp16; benchmarks/results/NVIDIA_H200-2026-11-27/diag_bf16_quantized.txt).
ROW_CONFIGS = (
    (128, KC(64, 32, 4, 2)),
    (256, KC(128, 32, 8, 2)),
    (512, KC(64, 16, 4, 1)),
    (None, KC(16, 16, 4, 1)),  # fp32 at D = 512: within an A100's 163 KiB of shared memory
)
COL_CONFIGS = (
    (256, KC(32, 128, 8, 2)),
    (512, KC(32, 64, 4, 1)),
    (None, KC(16, 16, 4, 1)),
)
INTERPRET_CONFIG = KC(16, 16, 1, 1)


def _pick(kind: str, table, D: int, dtype: torch.dtype) -> KernelConfig:
    configs = getattr(_OVERRIDE, "configs", {})
    if kind in configs:
        return configs[kind]
    if INTERPRET:
        return INTERPRET_CONFIG
    w = _tile_width(D, dtype)
    return next(cfg for limit, cfg in table if limit is None or w <= limit)


def row_config(D: int, dtype: torch.dtype) -> KernelConfig:
    """Row-block kernels (forward, backward dx, delta): one program owns BLOCK_N rows, streams K."""
    return _pick("row", ROW_CONFIGS, D, dtype)


def col_config(D: int, dtype: torch.dtype) -> KernelConfig:
    """Column-block kernels (q̄, backward dμ): one program owns BLOCK_K codes, streams a row range."""
    return _pick("col", COL_CONFIGS, D, dtype)


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
