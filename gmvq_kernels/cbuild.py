"""Small C libraries for the CPU paths, built on first use with the system C compiler and kept in
Triton's cache: the noise's Philox rounds (noise.c_philox) and impl="torch"'s row passes (cpu_rows.py).

Each is built for this CPU (``-O3 -march=native``, retried without ``-march=native`` for compilers that
lack it), so the CPU's features are part of the cache key with the source and the compiler's path.
Each is built at most once per process; where it cannot be, one warning says why and its caller
takes its fallback (the same results, slower). Where the cache cannot be written the library is still
built, into a temporary directory of the process's own."""
import os
import subprocess
import threading

_LOCK = threading.Lock()
_LOADED = {}  # name -> ctypes.CDLL, or None where it could not be built (tried once per process)
_PRIVATE = None  # _private_dir's directory, made on first need


def c_compiler():
    """The C compiler the libraries are built with: ``CC``, else the first of cc, gcc, clang on PATH, or None."""
    import shutil

    return os.environ.get("CC") or next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def cpu_features() -> dict:
    """NumPy's table of this CPU's features (name -> bool)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    return __cpu_features__


def _build(name, source, flags):
    """The path of ``name``.so built from ``source`` (compiled now, or taken from Triton's cache) with
    the first of the alternative lists of extra compiler ``flags`` that builds. Raises RuntimeError
    saying why it could not be built."""
    import hashlib
    import platform
    import tempfile

    from triton.runtime.cache import get_cache_manager

    cc = c_compiler()
    if cc is None:
        raise RuntimeError("no C compiler on PATH (cc, gcc or clang) and CC unset")
    features = ",".join(sorted(k for k, v in cpu_features().items() if v))
    key = hashlib.sha256("\0".join([source, cc, repr(flags), platform.machine(), features]).encode()).hexdigest()
    try:
        cache = get_cache_manager(key)
        path = cache.get_file(f"{name}.so")
    except OSError:  # a cache directory that cannot be made or read: build for this process alone
        cache = path = None
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            src, lib = os.path.join(tmp, f"{name}.c"), os.path.join(tmp, f"{name}.so")
            with open(src, "w") as f:
                f.write(source)
            errors = []
            # some compilers take no -march=native
            for extra in [arch + list(f) for arch in (["-march=native"], []) for f in flags]:
                run = subprocess.run([cc, "-O3", *extra, "-shared", "-fPIC", "-o", lib, src, "-lm"],
                                     capture_output=True, text=True, timeout=120)
                if run.returncode == 0:
                    break
                errors.append(f"{cc} -O3 {' '.join(extra)}: {run.stderr.strip()[-300:]}")
            else:
                raise RuntimeError("; ".join(errors))
            with open(lib, "rb") as f:
                data = f.read()
            try:
                path = None if cache is None else cache.put(data, f"{name}.so", binary=True)
            except OSError:
                path = None
            if path is None:  # kept in a directory of this process's own, removed at exit
                path = os.path.join(_private_dir(), f"{name}.so")
                with open(path, "wb") as f:
                    f.write(data)
    return path


def _private_dir():
    """A temporary directory for libraries that Triton's cache could not keep (``TRITON_CACHE_DIR`` or
    ``~/.triton/cache`` not writable): they are then built again in each process (~0.2–0.5 s)."""
    global _PRIVATE
    if _PRIVATE is None:
        import atexit
        import shutil
        import tempfile

        _PRIVATE = tempfile.mkdtemp(prefix="gmvq_kernels_")
        atexit.register(shutil.rmtree, _PRIVATE, ignore_errors=True)
    return _PRIVATE


def library(name, source, *, env, what, fallback, setup=None, flags=((),)):
    """``name``'s library (ctypes.CDLL), built from ``source`` with the first of the alternative lists
    of extra compiler ``flags`` that builds, on the first call of the process, and then passed to
    ``setup`` (to declare its functions' types); None with ``env``=0 (read at each call) or where it
    could not be built: then one warning says why, naming ``what`` it is and the ``fallback`` that runs
    instead."""
    import ctypes
    import warnings

    if os.environ.get(env, "1") == "0":
        return None
    if name not in _LOADED:
        with _LOCK:
            if name not in _LOADED:
                try:
                    lib = ctypes.CDLL(_build(name, source, [list(f) for f in flags]))
                    if setup is not None:
                        setup(lib)
                    _LOADED[name] = lib
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    _LOADED[name] = None
                    warnings.warn(f"gmvq_kernels: {what} could not be built ({e}); {fallback}. Set CC to a C "
                                  f"compiler, or {env}=0 to take it without this warning.", RuntimeWarning,
                                  stacklevel=3)
    return _LOADED[name]
