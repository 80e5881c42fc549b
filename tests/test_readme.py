"""Every Python block of the README runs as written, as a CPU user runs it (no TRITON_INTERPRET, so
impl="auto" takes the "torch" path; the kernels are covered by the other tests)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run_block(code):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i):
    out = run_block(BLOCKS[i])
    if "# was VectorQuantize(" in BLOCKS[i]:  # the drop-in example: the tokens and their means
        assert "torch.Size([8, 4, 4])" in out and "torch.Size([8, 32, 4, 4])" in out
    if "lens=lens" in BLOCKS[i]:  # padded sequences: code −1 and zeros at the padding
        assert out.strip() == "[-1] 0.0"
