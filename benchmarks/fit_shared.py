"""Find config.SMALL_SHARED_CONFIGS again: for GPUs whose blocks get 99 KiB of shared memory (sm_86, sm_89,
sm_120), per (input kind, kernel kind, D bucket), the first config of LADDER whose build fits, without a GPU.

It records the launches of tests/compile_kernels.py's variants (every dtype, mode, gradient set and D
bucket) with the configs such a GPU would get, compiles each for the given arch with the ptxas in
triton's wheel, and where a bucket's largest build exceeds the limit moves that bucket one step down its
ladder: first the same tile with one pipeline stage, then LADDER's narrower tiles. It repeats until every
bucket fits or has run out of steps, and prints the entries to paste into config.py. Run it after a
kernel change makes ``tests/compile_kernels.py 86`` fail. Buckets with a config.ARCH_CONFIGS "mma" entry
take that one on these GPUs (chosen to fit) and are not searched.

    python benchmarks/fit_shared.py [86]        # ~10-20 minutes on 2 CPU cores (compiles are cached)
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

import compile_kernels  # noqa: E402
from gmvq_kernels import config, devtools  # noqa: E402
from gmvq_kernels.config import KC  # noqa: E402

KERNEL_KIND = {"_gmvq_fwd_kernel": "row", "_gmvq_bwd_dx_kernel": "row", "_gmvq_bwd_delta_kernel": "delta",
               "_gmvq_bwd_dmu_kernel": "col", "_gmvq_fwd_colsum_kernel": "colsum", "_gmvq_encode_kernel": "encode"}
# after "the table's tile with one stage", in this order (narrower tiles use less shared memory)
LADDER = {
    "row": [KC(64, 32, 4, 1), KC(64, 16, 4, 1), KC(32, 16, 4, 1), KC(16, 16, 4, 1)],
    "delta": [KC(128, 32, 8, 1), KC(64, 32, 4, 1), KC(64, 16, 4, 1), KC(16, 16, 4, 1)],
    "col": [KC(32, 64, 4, 1), KC(16, 64, 4, 1), KC(16, 32, 4, 1), KC(16, 16, 4, 1)],
    "colsum": [KC(64, 256, 8, 1), KC(64, 128, 8, 1), KC(32, 64, 4, 1), KC(16, 64, 4, 1), KC(16, 16, 4, 1)],
    "encode": [KC(128, 32, 8, 1), KC(64, 32, 4, 1), KC(64, 16, 4, 1), KC(16, 16, 4, 1)],
}


def bucket_of(launch):
    """(input kind, kernel kind, largest D of the bucket) of a recorded launch, as config keys it."""
    kind = KERNEL_KIND[launch.name]
    x = launch.arg("x_ptr")
    if kind == "delta" and x.dtype == torch.float32:
        kind = "row"  # config.delta_config: fp32's Δ pass takes the row kernels' tiles
    kind_dt, limit = config.bucket(kind, launch.kwargs["BLOCK_D"], x.dtype)
    return kind_dt, kind, limit


def search(cc: int, limit: int):
    table = {}  # bucket -> config tried now (absent: the table's)
    steps = {}  # bucket -> its ladder position (-1: the table's tile with one stage)
    config.SMALL_SHARED_CONFIGS = table  # what config.table_config takes on a small-shared device
    while True:
        seen, over = set(), {}
        for launch in compile_kernels.record(f"sm_{cc}", limit):
            key = devtools.variant_key(launch)
            if key in seen or launch.name not in KERNEL_KIND:
                continue
            seen.add(key)
            shared = devtools.compile_launch(launch, cc).metadata.shared
            if shared > limit:
                b = bucket_of(launch)
                over[b] = max(over.get(b, 0), shared)
        print(f"{len(seen)} variants; over {limit} B: {over}", flush=True)
        stuck = []
        for b in over:
            kind_dt, kind, d_limit = b
            base = config._table_row(kind, d_limit, torch.float32 if kind_dt == "fp32" else torch.bfloat16)[1]
            steps[b] = steps.get(b, -2) + 1
            while steps[b] < len(LADDER[kind]):
                cand = KC(base.BLOCK_N, base.BLOCK_K, base.num_warps, 1) if steps[b] == -1 else LADDER[kind][steps[b]]
                if cand != table.get(b, base):
                    table[b] = cand
                    break
                steps[b] += 1
            else:
                stuck.append(b)
        if not over or len(stuck) == len(over):
            return table, {b: over[b] for b in stuck}


def main(argv):
    cc = int(argv[0]) if argv else 86
    table, stuck = search(cc, devtools.SHARED_LIMIT[cc])
    print("SMALL_SHARED_CONFIGS = {")
    for (kind_dt, kind, d_limit), cfg in sorted(table.items()):
        print(f"    ({kind_dt!r}, {kind!r}, {d_limit}): KC{tuple(vars(cfg).values())},")
    print("}")
    for b, shared in stuck.items():
        print(f"no config of the ladder fits {b}: {shared} B at its last step (refuse it: config.check_shared_memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
