"""Random sweep of ``tests/utils.check_case``: an impl against the reference by the three-way rule on
random valid cases (shapes, dtypes, τ, scales, prior, hard/soft, seeded or explicit noise, subsets of
upstream gradients) for a time budget; prints each failure with the arguments that reproduce it. A
developer's tool for finding the corners the fixed test cases miss, not part of the suite:

    python tests/random_sweep.py --impl triton --seconds 300 --seed 5     # kernels, in the interpreter
    python tests/random_sweep.py --impl torch --seconds 300 --seed 3      # impl="torch"
    python tests/random_sweep.py --seconds 300 --seed 31 --tau-one 0.5    # half the cases at τ = 1
    python tests/random_sweep.py --seconds 600 --seed 40 --dot-precision tf32x3 --exact-dots --dot-chunk 8
                                               # fp32 as a GPU runs it by default, tensor-core accumulation

Each failing case is run with impl="reference" as well, and that failure printed: where the reference
at the input precision fails the same check (half inputs' 2⁻⁷·max|gt| bound where the result is a
cancellation of rounded terms, e.g. dμ at K = 1 summing an fp16 upstream gradient), the rule, not the
impl, is what fails. ``--exact-dots`` makes the interpreter's fp32 dots correctly rounded (float64
products and sums), so that a result no longer depends on a tile's orientation or shape: a failure
that then disappears comes from two passes whose dots round differently. Where only the impl fails,
the case is run once more against impl="torch" in float64 as the ground truth: the reference's float64
rounding is not always fine enough (where a code's y is ~10⁻¹⁹, the likeliest code's y rounds to 1
and the reference's softmax backward loses that small code's share of the gradient, which impl="torch"
keeps), and a pass there points at the reference. What the sweeps of 2026-12-02 found is in the
README ("Correctness") and, run by run, in docs/correctness_history.md. Codes that differ from
float64's at near-ties are skipped (see the README's GPU run).
"""
import argparse
import contextlib
import importlib
import math
import os
import random
import sys
import time

import torch  # (not triton: TRITON_INTERPRET is set in main, before triton is first imported)

UPSTREAM = ["quantized", "log_likelihood", "agg_posterior", "latent_nll", "mixture_var", "entropy"]


def draw(rng, impl):
    """(N, K, D, check_case keywords): small shapes for the interpreter, larger for the torch impls."""
    big = impl != "triton"
    N = rng.choice([1, 2, 3, rng.randint(1, 300 if big else 40)])
    K = rng.choice([1, 2, rng.randint(1, 700 if big else 70)])
    D = rng.choice([1, 3, rng.randint(1, 70 if big else 40)])
    log_uniform = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    kw = dict(dtype=rng.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16]),
              hard=rng.random() < 0.5, prior=rng.random() < 0.5, tau=log_uniform(0.1, 10.0),
              explicit_noise=rng.random() < 0.2, seed=rng.randint(0, 2**63), scale=log_uniform(0.1, 10.0),
              log_var_scale=rng.choice([0.3, 1.0]), offset=rng.choice([0.0, 0.0, 1.0]))
    if rng.random() < 0.3:
        kw["upstream_only"] = set(rng.sample(UPSTREAM, rng.randint(1, 3)))
    return N, K, D, kw


def failure(check_case, N, K, D, impl, kw):
    """The first line of check_case's assertion, or None if the case passes."""
    try:
        check_case(N, K, D, torch.device("cpu"), impl=impl, **kw)
    except AssertionError as e:
        return str(e).splitlines()[0]
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["triton", "torch"], default="triton")
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--cases", type=int, help="stop after this many cases (before --seconds runs out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-dots", action="store_true", help="correctly rounded fp32 dots in the interpreter")
    p.add_argument("--dot-chunk", type=int, metavar="K",
                   help="with --exact-dots: K products at a time onto the accumulator, as tensor cores add them "
                        "(8: a tf32 HGMMA; testing.interpreter_exact_fp32_dots)")
    p.add_argument("--dot-precision", choices=["ieee", "tf32x3", "tf32"], default="ieee",
                   help="fp32 inputs' dot precision for the impl (default ieee; tf32x3 is a GPU's default)")
    p.add_argument("--tau-one", type=float, default=0.0, metavar="P",
                   help="the share of cases at τ = 1 (the sample from q's exponentials with drawn noise), from an "
                        "RNG of its own: the other draws stay those of the seed")
    args = p.parse_args(argv)
    # the interpreter only for the kernels: under it gumbel_noise would run its kernel too
    os.environ.setdefault("TRITON_INTERPRET", "1" if args.impl == "triton" else "0")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    importlib.import_module("conftest")  # the interpreter with the GPU's rounding, as the suite runs it
    check_case = importlib.import_module("utils").check_case
    testing = importlib.import_module("gmvq_kernels.testing")
    with testing.interpreter_exact_fp32_dots(args.dot_chunk) if args.exact_dots else contextlib.nullcontext():
        return sweep(args, check_case)


def sweep(args, check_case):
    """The cases of one run, printed as they fail; the process's exit code."""
    rng, t0, cases, failed, own, resolved = random.Random(args.seed), time.time(), 0, 0, 0, 0
    tau_rng = random.Random(f"tau-one {args.seed}")
    while time.time() - t0 < args.seconds and cases != args.cases:
        N, K, D, kw = draw(rng, args.impl)
        if tau_rng.random() < args.tau_one:
            kw["tau"] = 1.0
        if args.dot_precision != "ieee":  # check_case's default; named only when another (the draws unchanged)
            kw["dot_precision"] = args.dot_precision
        cases += 1
        msg = failure(check_case, N, K, D, args.impl, kw)
        if msg is None or msg.startswith("codes differ"):
            continue
        failed += 1
        ref = failure(check_case, N, K, D, "reference", kw)
        alt = None
        if ref is None:  # only the impl fails: does it pass against a second float64 evaluation?
            own += 1
            alt = failure(check_case, N, K, D, args.impl, dict(kw, truth="torch")) or "passes"
            resolved += alt == "passes"
        # (a set's order of print varies from process to process: sorted, so that runs compare line by line)
        shown = {k: sorted(v) if isinstance(v, set) else v for k, v in kw.items()}
        print(f"FAIL N={N} K={K} D={D} {shown}\n     {msg}" +
              (f"\n     the reference at the input precision: {ref}" if ref else "") +
              (f"\n     against impl=\"torch\" in float64 as the truth: {alt}" if alt else ""), flush=True)
    print(f"{cases} cases, {failed} failures ({args.impl}, seed {args.seed}); {own} of them the impl's alone, "
          f"{resolved} of those passing against impl=\"torch\" in float64")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
