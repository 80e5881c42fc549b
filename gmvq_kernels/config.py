"""Launch configuration and interpreter detection (one place for block sizes).

Configs are bucketed by the tile width in bytes (fp32 tiles count double). They were checked for
correctness and timed on one NVIDIA H200 (torch 2.11, triton 3.6.0, 2026-11-27), but not yet tuned:
see benchmarks/README.md. There is no autotuning; benchmarks/gpu_check.py --tune times alternatives
through ``OVERRIDE``.
Under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``import triton``) small blocks keep the
CPU tests fast while still crossing many codebook tiles.
"""
import os
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


# Tuning hook (benchmarks/gpu_check.py --tune): {"row": KernelConfig, "col": KernelConfig} replaces the
# defaults below for every D and dtype while set.
OVERRIDE = {}


def _tile_width(D: int, dtype: torch.dtype) -> int:
    """BLOCK_D in 2-byte units: shared memory is what limits the tiles, and fp32 tiles take twice the
    bytes of bf16 ones (seen on an H200: fp32 at the bf16 configs asked for up to 356 KiB of 227)."""
    return block_d(D) * max(1, torch.empty((), dtype=dtype).element_size() // 2)


KC = KernelConfig
# (largest tile width in 2-byte units, config), first match wins; the last row takes everything wider.
ROW_CONFIGS = (
    # NOT (128, 64, 8 warps, 3 stages) at ≤ 64: with triton 3.6 on an H200 it returned garbage quantized
    # rows (~1 %, bf16/fp16); (64, 64, 4, 2) was correct there and as fast or faster
    # (benchmarks/results/NVIDIA_H200-2026-11-27/diag_bf16_quantized.txt, config_retime.txt)
    (64, KC(64, 64, 4, 2)),
    (128, KC(64, 64, 4, 3)),
    (256, KC(64, 32, 8, 2)),
    (512, KC(32, 32, 8, 2)),
    (None, KC(16, 16, 4, 1)),  # fp32 at D = 512: within an A100's 163 KiB of shared memory
)
COL_CONFIGS = (
    (64, KC(64, 128, 8, 3)),
    (128, KC(64, 64, 4, 3)),
    (256, KC(32, 64, 8, 2)),
    (512, KC(32, 32, 8, 2)),
    (None, KC(16, 16, 4, 1)),
)
INTERPRET_CONFIG = KC(16, 16, 1, 1)


def _pick(kind: str, table, D: int, dtype: torch.dtype) -> KernelConfig:
    if kind in OVERRIDE:
        return OVERRIDE[kind]
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


def split_rows(N: int, num_col_blocks: int, BLOCK_N: int, device: torch.device):
    """(splits, rows_per_split) for the column kernels, so that small K still fills the GPU.

    Each split writes its own partial sums (splits, K[, D]) that torch adds up afterwards:
    deterministic, no atomics, and the extra memory is bounded by about 2·SMs·BLOCK_K·D floats,
    independent of N and K."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2  # interpreter (and compile-only tests): still exercise the split path
    splits = max(1, -(-target // num_col_blocks))
    rows = -(-N // splits)
    rows_per_split = -(-rows // BLOCK_N) * BLOCK_N
    return -(-N // rows_per_split), rows_per_split
