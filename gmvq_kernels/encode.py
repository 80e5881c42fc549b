"""Inference kernel of the tokenizer path: codes = argmax_k ℓ_nk, nothing else.

``_gmvq_encode_kernel`` (row blocks, streams the codebook): one program owns BLOCK_N rows of x and walks
all K codes in BLOCK_K tiles. Per tile: the distance dot, the logits ℓ = b − d·a (the same helpers as
the training kernels, so the codes are the forward's ``codes``) and a running max / argmax. No exp, no
noise, no second softmax, no q̄ pass, no accumulator: one pass over N×K, memory O(N + K·D).

Ties and precision: the dot of half inputs multiplies exactly and accumulates in fp32, and fp32 inputs
use tf32x3 by default (near fp32), so a code can differ from the fp32 reference's only where two logits
of a row agree to within a few fp32 ulps (then either is a maximum to fp32 accuracy); an exact tie goes
to the lower index, as torch.argmax.
"""
import torch
import triton
import triton.language as tl

from . import config
from .config import block_d, encode_config
from .spec import code_sq_norms
from .tiles import (code_norm_operand, dot_precision_for, even_k, first_argmax, half_row_operand, heuristics,
                    interpreter_operand, load_rows, row_half_logits, row_tile, split_code_range, sq_norms, wide_codes)


@heuristics({"EVEN_K": even_k, "WIDE_CODES": wide_codes})
@triton.jit
def _gmvq_encode_kernel(
    x_ptr, means_ptr, a_ptr, b_ptr, mm_ptr, mp_ptr, best_ptr, codes_ptr, N, K, D, codes_per_split,
    DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr, WIDE_CODES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """argmax_k ℓ_nk of BLOCK_N rows over one split of the codes (program_id(1)): writes codes
    (splits, N) int64, −1 for a row whose x is not finite (NaN policy), and, when ``best_ptr`` is not
    None (several splits), the maximum ℓ (splits, N) fp32 for the final reduction.
    a, b (K,) fp32: spec.logit_terms; mm (K,) fp32: spec.code_sq_norms, or None to form the norms
    from each code tile (the launcher's choice at D ≤ 32: tiles.load_codes); mp (K, 16): the codes' norm
    operand (tiles.code_norm_operand) or None, as in the training kernels; with it the logits come from
    the halved distances (tiles.row_half_logits) and a_ptr holds 2a."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    split, k_lo, k_hi = split_code_range(codes_per_split, K)
    offs_d = tl.arange(0, BLOCK_D)
    x = load_rows(x_ptr, offs_n, N, D, offs_d)
    xx = sq_norms(x)
    if mp_ptr is not None:  # the rows' operand of the halved distances (tiles.row_half_logits)
        xh = half_row_operand(xx, x)
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_k = tl.zeros((BLOCK_N,), tl.int32)  # K < 2³¹; int64 at the store (3 registers fewer)
    for k_start in range(k_lo, k_hi, BLOCK_K):
        if mp_ptr is not None:  # a_ptr holds 2a
            _, _, logits = row_half_logits(x, xh, means_ptr, a_ptr, b_ptr, mp_ptr, k_start, K, D, offs_d, EVEN_K,
                                           BLOCK_K, DOT_PRECISION, WIDE_CODES)
        else:
            # a stands in for v (σ²), which the argmax does not need: the pointer is only read
            _, _, _, _, _, _, logits, _ = row_tile(x, xx, xx, means_ptr, a_ptr, b_ptr, a_ptr, mm_ptr, None, k_start,
                                                   K, D, offs_d, EVEN_K, BLOCK_K, DOT_PRECISION, WIDE_CODES)
        tile_max = tl.max(logits, axis=1)
        tile_arg = first_argmax(logits, tile_max, BLOCK_K)
        better = tile_max > best  # strict: the first maximum wins, as torch.argmax
        best_k = tl.where(better, tile_arg + k_start, best_k)
        best = tl.maximum(best, tile_max)
    bad = ~(xx < float("inf"))
    mask_n = offs_n < N
    tl.store(codes_ptr + split * N + offs_n, tl.where(bad, -1, best_k).to(tl.int64), mask=mask_n)
    if best_ptr is not None:
        tl.store(best_ptr + split * N + offs_n, best, mask=mask_n)


def gmvq_encode_fwd(x, means, a, b, *, dot_precision, mm=None, mp=None):
    """Launch the encode kernel. x (N, D), means (K, D): contiguous, same kernel dtype; a, b (K,) fp32
    contiguous; mm = ||μ||² (K,) fp32 and mp its norm operand (tiles.code_terms forms them with a and b),
    formed here where None. Returns codes (N,) int64.

    Few row blocks (small N, e.g. N = 8192 against 132 SMs) would leave the GPU idle, so the codes are
    then split across programs (split-K): each writes its split's best (ℓ, code) per row, and torch
    picks the best split (the first on ties: the lowest code, as within a split). Deterministic; the
    partials are O(splits·N)."""
    N, D = x.shape
    K = means.shape[0]
    cfg = encode_config(D, x.dtype, x.device)
    row_blocks = triton.cdiv(N, cfg.BLOCK_N)
    # its merge is one gather: worth it at any size
    splits, codes_per_split = config.split_codes(N, K, cfg.BLOCK_N, cfg.BLOCK_K, x.device, min_codes=0)
    codes = torch.empty((splits, N), dtype=torch.int64, device=x.device)
    best = torch.empty((splits, N), dtype=torch.float32, device=x.device) if splits > 1 else None
    if D > 32 or config.norm_dot(x.dtype):
        mm = code_sq_norms(means) if mm is None else mm
        mp = code_norm_operand(mm, x.dtype) if mp is None else mp
    else:  # the kernel forms the norms from each code tile
        mm = mp = None
    if mp is not None:
        a = a * 2.0  # tiles.row_half_logits takes 2a
    _gmvq_encode_kernel[(row_blocks, splits)](
        interpreter_operand(x), interpreter_operand(means), a, b, mm, mp,
        best, codes, N, K, D, codes_per_split,
        DOT_PRECISION=dot_precision_for(x, dot_precision), BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K,
        BLOCK_D=block_d(D), **cfg.launch_options(),
    )
    if best is None:
        return codes[0]
    return codes.gather(0, best.argmax(0, keepdim=True))[0]
