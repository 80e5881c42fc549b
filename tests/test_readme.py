"""The README's runnable example runs as written (as a CPU user runs it: no TRITON_INTERPRET, so
impl="auto" takes the reference; the kernels are covered by the other tests)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_replacing_a_vq_layer_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Replacing a VQ layer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([8, 4, 4])" in proc.stdout and "torch.Size([8, 32, 4, 4])" in proc.stdout
