"""Test setup: without a GPU the kernels run in Triton's interpreter, which must be switched on before
triton is first imported (importing torch does not import triton)."""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import gmvq_kernels  # noqa: E402,F401  (decorates the kernels under the setting above)
from gmvq_kernels.config import INTERPRET  # noqa: E402

if INTERPRET:  # hold the kernels to the GPU's semantics where the interpreter (triton < 3.8) differs:
    # fp32 → bf16 casts round to nearest even (it truncates), a default min/max skips NaN (it propagates)
    from gmvq_kernels.testing import interpreter_like_gpu

    interpreter_like_gpu()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the slow / full cross-product cases")
    parser.addoption("--run-benchmarks", action="store_true", help="run the pytest-benchmark suite")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="needs --run-slow")
    skip_bench = pytest.mark.skip(reason="needs --run-benchmarks")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "benchmark_suite" in item.keywords and not config.getoption("--run-benchmarks"):
            item.add_marker(skip_bench)


@pytest.fixture
def device():
    return DEVICE
