"""Developer tools: capture the kernel launches of a launcher call without running them, compile each for
a real GPU target on a machine without a GPU, and read its SASS like a profiler would.

Used by ``tests/compile_kernels.py`` (every variant compiles for sm_80/sm_90 within the shared-memory
limits) and ``benchmarks/static_cost.py`` (registers, spills, occupancy and instructions per (n, k)
element, and a throughput model). Needs compiled (not interpreted) kernels: import it in a process
without ``TRITON_INTERPRET=1``. Only triton's own wheel is used: it ships ptxas, cuobjdump and nvdisasm.
"""
import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Heuristics
from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

from .tiles import apply_rules

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# largest shared memory one block may use (bytes, opted in): A100 163 KiB, the sm_86 / sm_89 / sm_120 parts
# (RTX 30, 40 and 50 series, A10, L4, L40S) 99 KiB, H100/H200 and B200 227 KiB
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


@dataclass
class Launch:
    """One kernel launch as the launcher issued it: the JIT function, its grid and arguments."""
    fn: object
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def name(self):
        return self.fn.fn.__name__

    def arg(self, name):
        """A positional argument by its parameter name (named as the recorder names them)."""
        return self.args[self.fn.arg_names.index(name)]


class _Recorder:
    """Stands in for a kernel: records its launches, with ``triton.heuristics`` values applied."""

    def __init__(self, kernel, log):
        self.heuristics = {}
        while isinstance(kernel, Heuristics):
            self.heuristics = {**kernel.values, **self.heuristics}
            kernel = kernel.fn
        self.fn, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kwargs = apply_rules(self.heuristics, self.fn.arg_names, args, kwargs)
            self.log.append(Launch(self.fn, tuple(grid), args, kwargs))
            # the launcher goes on with the kernel's outputs unwritten: zeroed index tensors (codes,
            # hard samples) keep what it does with them in range
            for t in args:
                if isinstance(t, torch.Tensor) and t.dtype == torch.int64:
                    t.zero_()
        return launch


@contextlib.contextmanager
def record_launches(*modules):
    """Within the block, every ``kernel[grid](...)`` of a ``_..._kernel`` JIT function in ``modules``
    is recorded (into the yielded list) instead of run: launchers can be called on CPU tensors."""
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "needs compiled (non-interpreted) kernels"
    log, patched = [], {}
    for mod in modules:
        for attr in dir(mod):
            obj = getattr(mod, attr)
            if isinstance(obj, (JITFunction, Heuristics)) and attr.startswith("_") and attr.endswith("_kernel"):
                patched[(mod, attr)] = obj
                setattr(mod, attr, _Recorder(obj, log))
    try:
        yield log
    finally:
        for (mod, attr), obj in patched.items():
            setattr(mod, attr, obj)


@contextlib.contextmanager
def host_path_on_cpu():
    """Within the block, ``gmvq`` and ``gmvq_encode`` on CPU tensors take the path they take on CUDA
    tensors (kernel impl, no data-dependent value checks) with every kernel launch recorded instead of
    run (yields the list): the host work of a call, the Python, dispatcher and torch ops around the
    kernels, can be timed without a GPU. Triton's own launch cost is not included."""
    from . import backward, checks, encode, forward, functional, tiles

    saved = [(checks, "can_use_triton"), (functional, "can_use_triton"), (checks, "_skip_value_checks")]
    originals = [getattr(mod, name) for mod, name in saved]
    for mod, name in saved:
        setattr(mod, name, lambda _t: True)
    try:
        with record_launches(forward, backward, encode, tiles) as log:
            yield log
    finally:
        for (mod, name), obj in zip(saved, originals):
            setattr(mod, name, obj)


def compile_launch(launch: Launch, cc: int):
    """Compile a recorded launch for sm_{cc} with the argument specialisation the JIT would use on a
    GPU (16-byte divisibility of integers and pointers), returning triton's CompiledKernel."""
    fn = launch.fn
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, spec, opts)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def bind_cost_us(launch: Launch, cc: int = 90, iters: int = 1000) -> float:
    """µs of host time the Triton JIT spends on this launch before its C launcher, on this CPU: binding
    the arguments, their specialisation (16-byte divisibility and the like) and the kernel-cache key,
    as ``JITFunction.run`` does at every call. The launcher's own argument packing and the driver's
    launch are not included (they need a GPU)."""
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", cc, 32)))
    kwargs = dict(launch.kwargs, debug=False, instrumentation_mode="")  # as run() adds them
    cache = {}

    def once():
        _, spec, opts = binder(*launch.args, **kwargs)
        compute_cache_key(cache, spec, opts)

    for _ in range(iters // 10):
        once()
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    return (time.perf_counter() - t0) / iters * 1e6


def variant_key(launch: Launch):
    """Launches that compile to the same binary share this key (signature dtypes, constexprs, options)."""
    def sig(v):
        if isinstance(v, torch.Tensor):
            return (str(v.dtype), v.data_ptr() % 16 == 0)
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return ("int", v == 1, v % 16 == 0, -2**31 <= v < 2**31)
        return type(v).__name__
    return (launch.name, tuple(sig(a) for a in launch.args), tuple(sorted(launch.kwargs.items())))


# ---------------------------------------------------------------------------------------------------
# Reading the binary

def _run_tool(tool, *args, data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        out = subprocess.run([os.path.join(BIN, tool), *args, path], capture_output=True, text=True, check=True)
        return out.stdout + out.stderr


def _ptxas(cc: int) -> str:
    """The ptxas triton itself takes for sm_{cc} (its backend's choice): triton 3.6–3.8 the wheel's
    ``ptxas`` below sm_100 and the newer ``ptxas-blackwell`` from sm_100 on; triton 3.9 the latter from
    sm_90 on (it writes PTX 9.4 there, which the older one rejects)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(cc).path


def resource_usage(kernel):
    """(registers, spill bytes (stores + loads) per thread, stack bytes, wgmma serialised) from ptxas'
    report. The last is "" or the codes of ptxas' performance warnings that it serialised the kernel's
    wgmma, every one waiting for the one before: C7515 (non-wgmma instructions defining accumulator
    registers inside a pipeline stage; tiles.nonempty_range names the cause found in these kernels),
    C7512 (insufficient register resources), ..."""
    cc = kernel.metadata.target.arch
    arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([_ptxas(cc), "-v", f"--gpu-name={arch}", ptx, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    stack = re.search(r"(\d+) bytes (?:cumulative )?stack", log)
    serialized = sorted(set(re.findall(r"\((C\d+)\) Potential Performance Loss: wgmma\.mma_async instructions are "
                                       r"serialized", log)))
    return regs, spills, int(stack.group(1)) if stack else 0, " ".join(serialized)


_INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")

# instruction classes (by opcode prefix; first match wins)
CLASSES = (
    ("HGMMA", ("HGMMA", "WARPGROUP")), ("HMMA", ("HMMA",)), ("MUFU", ("MUFU",)),
    ("IMAD", ("IMAD", "IMUL")),
    ("FP32", ("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FCHK", "FSWZADD")),
    ("CONV", ("I2F", "F2I", "F2F", "I2FP", "F2FP", "FRND")),
    ("LDS/STS", ("LDS", "STS", "LDSM", "STSM")), ("LDL/STL", ("LDL", "STL")),
    ("LDG/STG", ("LDG", "STG", "LDGSTS", "UTMALDG", "UBLKCP", "LDGDEPBAR", "DEPBAR")),
    ("BAR", ("BAR", "SYNCS", "ARRIVES", "WARPSYNC")), ("SHFL", ("SHFL",)),
    ("UNIFORM", ("U",)), ("CONTROL", ("BRA", "EXIT", "BSSY", "BSYNC", "CALL", "RET", "NOP", "YIELD")),
)


def _classify(op):
    for cls, prefixes in CLASSES:
        if op.startswith(prefixes):
            return cls
    return "ALU"  # integer / logic / move / predicate: IADD3, LOP3, SHF, ISETP, SEL, MOV, PRMT, LEA, ...


@dataclass
class Sass:
    """The main loop of a kernel read from its SASS: every instruction between the target of the
    outermost backward branch and the branch (both ends included; constexpr-dead code is gone, runtime
    branches inside are counted as if taken)."""
    total: int
    loop_len: int
    classes: dict = field(default_factory=dict)      # class -> instructions in the loop body
    mma_shapes: dict = field(default_factory=dict)   # e.g. "HGMMA.64x64x16.F32.BF16" -> count in the loop
    hgmma_flops: float = 0.0                         # FLOPs of the loop's HGMMAs, per warpgroup
    hmma_flops: float = 0.0                          # FLOPs of the loop's HMMAs, per warp
    # the longest loop that starts after the main one ends (hard mode's dμ: the rows of each code block,
    # backward.hard_rows), counted the same way (its ``total`` is 0), or None
    after: "Sass | None" = None
    # the main loop's code that a forward branch can jump over (the forward kernel's lazy rescale,
    # forward.LAZY_LOG2), counted the same way and included above, or None
    skippable: "Sass | None" = None

    def mma_flops_per_cta(self, num_warps: int) -> float:
        """Tensor-core FLOPs of one loop iteration of a CTA of ``num_warps`` warps."""
        return self.hgmma_flops * max(1, num_warps // 4) + self.hmma_flops * num_warps


def disassemble(kernel):
    """(instructions, labels, loops) of a compiled kernel's SASS: instructions as (address, opcode,
    operands), labels by name to address, loops as (start, end) addresses of every backward branch, the
    branch-to-itself after EXIT (padding) left out, and so are branches placed after the last EXIT:
    out-of-line blocks that jump back into the body, not loops (an mbarrier wait's retry, where TMA
    loads are pipelined, would otherwise make the epilogue part of the main loop)."""
    text = _run_tool("nvdisasm", "-c", data=kernel.asm["cubin"], suffix=".cubin")
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            instrs.append((addr, m.group(2), m.group(3)))
    loops = []
    last_exit = max((addr for addr, op, _ in instrs if op.startswith("EXIT")), default=float("inf"))
    for addr, op, operands in instrs:
        if op.startswith("BRA") and addr < last_exit:
            t = re.search(r"\((\.L_x_\d+)\)", operands)
            if t and labels.get(t.group(1), addr) < addr:  # strictly backward
                loops.append((labels[t.group(1)], addr))
    return instrs, labels, loops


def read_sass(kernel) -> Sass:
    instrs, labels, loops = disassemble(kernel)
    if loops:  # the longest backward jump: the main loop over tiles
        lo, hi = max(loops, key=lambda r: r[1] - r[0])
        later = [r for r in loops if r[0] > hi]
        after = max(later, key=lambda r: r[1] - r[0]) if later else None
    else:
        lo, hi, after = -1, float("inf"), None
    sass = _loop_sass([op for a, op, _ in instrs if lo <= a <= hi], total=len(instrs))
    skipped = set()
    for addr, op, operands in instrs:
        t = re.search(r"\((\.L_x_\d+)\)", operands) if op.startswith("BRA") and lo <= addr < hi else None
        if t and addr < labels.get(t.group(1), -1) <= hi:
            skipped.update(a for a, _, _ in instrs if addr < a < labels[t.group(1)])
    if skipped:
        sass.skippable = _loop_sass([op for a, op, _ in instrs if a in skipped], total=0)
    if after is not None:
        sass.after = _loop_sass([op for a, op, _ in instrs if after[0] <= a <= after[1]], total=0)
    return sass


def loop_trace(kernel):
    """(length, trace) of a kernel's main loop (the longest backward branch's): the loop's length in
    instructions and, by position in it, its HGMMAs (by shape, "64x32x16"), its waits on them ("WAIT")
    and its runs of MUFU instructions ("MUFUx<n>"): where a dot's wait lies against the elementwise work
    (benchmarks/overlap_probe.py)."""
    instrs, _, loops = disassemble(kernel)
    lo, hi = max(loops, key=lambda r: r[1] - r[0])
    trace = []
    for addr, op, _ in instrs:
        if not lo <= addr <= hi:
            continue
        i = (addr - lo) // 16  # instructions are 16 bytes
        if op.startswith("HGMMA"):
            trace.append((i, op.split(".")[1]))
        elif op.startswith("WARPGROUP.DEPBAR"):
            trace.append((i, "WAIT"))
        elif op.startswith("MUFU"):
            if trace and trace[-1][1].startswith("MUFU"):
                trace[-1] = (trace[-1][0], f"MUFUx{int(trace[-1][1][5:]) + 1}")
            else:
                trace.append((i, "MUFUx1"))
    return (hi - lo) // 16 + 1, trace


def mma_flops(op):
    """FLOPs of one tensor-core instruction by its SASS opcode: an HGMMA's per warpgroup
    ("HGMMA.64x32x16..."), an HMMA's per warp ("HMMA.16816": m16 n8 k16; "HMMA.1688": k8)."""
    if op.startswith("HGMMA"):
        m, n, k = (int(v) for v in re.search(r"(\d+)x(\d+)x(\d+)", op).groups())
    else:
        digits = re.match(r"HMMA\.(\d+)", op).group(1)
        m, n, k = int(digits[:2]), int(digits[2]), int(digits[3:])
    return 2.0 * m * n * k


def _loop_sass(body, total) -> Sass:
    """The counts of one loop body (its opcodes, in order)."""
    classes, shapes, flops = {}, {}, {"HGMMA": 0.0, "HMMA": 0.0}
    for op in body:
        cls = _classify(op)
        classes[cls] = classes.get(cls, 0) + 1
        if op.startswith(("HGMMA", "HMMA")):
            shapes[op] = shapes.get(op, 0) + 1
            flops["HGMMA" if op.startswith("HGMMA") else "HMMA"] += mma_flops(op)
    return Sass(total=total, loop_len=len(body), classes=classes, mma_shapes=shapes,
                hgmma_flops=flops["HGMMA"], hmma_flops=flops["HMMA"])
