"""The Gumbel noise is Gumbel: goodness of fit on 2²¹ draws, moments, and the transform over all tails
against float64 (the Gumbel-max χ² tests are in test_reference.py and test_kernels.py; the kernels'
transform, with its upper-tail series, is checked over the same words in test_kernels.py)."""
import math
import os

import numpy as np
import pytest
import torch

import gmvq_kernels as gk
from gmvq_kernels import cbuild, config, noise
from gmvq_kernels.noise import SERIES_W, bits_to_gumbel_numpy, gumbel_noise_numpy, philox_words_numpy, words_to_gumbel

EULER_GAMMA = 0.5772156649015329


def ks_pvalue(samples: np.ndarray) -> float:
    """Kolmogorov–Smirnov test of ``samples`` against the standard Gumbel CDF exp(−exp(−x))."""
    x = np.sort(samples.astype(np.float64))
    n = x.size
    cdf = np.exp(-np.exp(-x))
    i = np.arange(1, n + 1)
    d = max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n))
    t = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d  # Stephens' finite-n correction
    return float(min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 101))))


@pytest.fixture(scope="module", params=["c-twin", "numpy-fallback"])
def draws(request):
    """2²¹ draws (2048 rows × 1024 codes) of the kernels' words (tests in test_kernels.py pin the
    in-kernel noise to them), fast without the interpreter: as the eager CPU paths draw them
    (``gumbel_noise_numpy``), by the C twin (equal to ``words_to_gumbel``, its transform in torch ops,
    bit for bit: ``test_twin_transform_over_every_word``) and by the NumPy fallback (NumPy's logs)."""
    with config.env_flag(noise.C_PHILOX_ENV, request.param == "c-twin"):
        if request.param == "c-twin" and noise.c_philox() is None:
            pytest.skip("no C compiler: the C twin cannot be built here (test_c_twin_builds_where_a_compiler_is)")
        return gumbel_noise_numpy(2048, 1024, seed=12345).numpy().ravel()


def test_noise_fits_gumbel_on_two_million_draws(draws):
    g = draws
    assert np.isfinite(g).all()
    assert ks_pvalue(g) > 1e-3
    # moments: mean γ, variance π²/6 (standard errors ~ 1e-3 and ~2e-3 at this n)
    assert abs(g.mean() - EULER_GAMMA) < 5e-3, g.mean()
    assert abs(g.var() - math.pi**2 / 6) < 1e-2, g.var()
    # each of the four Philox words (codes k mod 4) is Gumbel on its own
    for i in range(4):
        assert ks_pvalue(g.reshape(2048, 1024)[:, i::4].ravel()) > 1e-3


def test_ks_rejects_a_wrong_distribution(draws):
    """The test above can fail: the same draws shifted by 0.01 or scaled by 1.01 are rejected."""
    g = draws
    assert ks_pvalue(g + 0.01) < 1e-3
    assert ks_pvalue(g * 1.01) < 1e-3


def tail_words():
    """Words over every part of the transform: u ∈ (1 − 2⁻¹¹, 1) (the kernels' series branch), both
    sides of the series' switch, and the rest of (0, 1)."""
    top = np.arange(2**23 - 4096, 2**23, dtype=np.int64) << 9
    edge = (np.arange(-2048, 2048, dtype=np.int64) + int((1 - SERIES_W) * 2**23)) << 9
    rest = np.linspace(0, 2**23 - 1, 4096).astype(np.int64) << 9
    return torch.from_numpy(np.concatenate([top, edge, rest]))


def exact_gumbel(words):
    """The exact −log(−log u) of ``words`` (int64 tensor) in float64."""
    u = ((words >> 9).double() + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


def assert_matches_float64(words, got, tol=4e-7):
    """``got`` (the transform of ``words``) against the exact −log(−log u) of the same words in float64."""
    exact = exact_gumbel(words)
    err = (got.double().cpu() - exact).abs() / exact.abs().clamp_min(1.0)
    assert err.max() < tol, (err.max(), exact[err.argmax()])


def ulps(got, exact):
    """|got − exact| in units of fp32's spacing at ``exact`` (float64 tensors)."""
    spacing = torch.from_numpy(np.spacing(exact.abs().float().numpy())).double()
    return (got.double() - exact).abs() / spacing


def every_word():
    """Every value of the 23 bits that make u (the whole domain of the CPU transform), as words, in slices."""
    for i in range(0, 2**23, 2**21):
        yield torch.arange(i, i + 2**21, dtype=torch.int64) << 9


def test_twin_transform_over_every_word():
    """The CPU twin's transform at each of the 2²³ values u can take: its fp32 log within 0.86 ulp of
    log u and of log E (E = −log u), g within 1.4·10⁻⁷ of the exact transform (relative to max(|g|, 1);
    the upper tail, u near 1, included), and the C twin's values (``gmvq_words_to_gumbel``, where a
    compiler builds it) equal to ``words_to_gumbel``'s, torch's ops, bit for bit: a fused multiply-add
    left to the compiler, or one of torch's float64 roundings off, would show here."""
    lib = noise.c_philox()
    for words in every_word():
        u = ((words >> 9).float() + 0.5) * 2.0**-23
        log_u = noise._log_f32_torch(u.clone())
        assert ulps(log_u, torch.log(u.double())).max() < 0.86
        E = -log_u
        assert ulps(noise._log_f32_torch(E.clone()), torch.log(E.double())).max() < 0.86
        g = words_to_gumbel(words)
        assert_matches_float64(words, g, tol=1.4e-7)
        if lib is not None:
            c = np.empty(words.numel(), dtype=np.float32)
            w = words.numpy().astype(np.uint32)
            lib.gmvq_words_to_gumbel(w.ctypes.data, c.ctypes.data, w.size)
            assert torch.equal(torch.from_numpy(c), g)


def test_numpy_fallback_transform_matches_float64():
    """The NumPy fallback's transform (NumPy's fp32 logs, no series) at each of the 2²³ values u can take
    is exact to fp32 accuracy in the upper tail (u near 1, −log u tiny) and everywhere else; so is the
    kernels' transform on the tails (test_kernels.py, interpreter)."""
    for words in [*every_word(), tail_words()]:
        assert_matches_float64(words, torch.from_numpy(bits_to_gumbel_numpy((words >> 9).float().numpy())))


def test_numpy_twin_words_are_philox_per_four_codes():
    """Code 4j + i takes word i of call j: the (N, K) words of a K not divisible by 4 are a prefix of
    the words of K rounded up."""
    a = philox_words_numpy(3, 10, seed=9)
    b = philox_words_numpy(3, 12, seed=9)
    assert np.array_equal(a, b[:, :10])
    assert len(np.unique(b)) == b.size  # 36 distinct 32-bit words


def philox_exact(counter, key, rounds=7):
    """Philox4x32 in Python integers (exact): the ground truth of the NumPy twin's words."""
    c, k = list(counter), list(key)
    for _ in range(rounds):
        p0, p2 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p2 >> 32) ^ c[1] ^ k[0], p2 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
        k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
    return c


# shapes: one row block; 5 row blocks of one row each (4·32768 + 3 codes); long rows; row blocks of
# 131 rows and a last one of 38 (250 calls a row)
TWIN_CASES = [(0, 5, 10, 0), (2**64 - 3, 7, 37, 2**32 + 3), (12345, 3, 40000, 5), (9, 1100, 16, 2**40),
              (4, 5, 4 * 32768 + 3, 11), (77, 300, 1000, 2**33)]


@pytest.fixture(params=["c", "numpy"])
def rounds(request, monkeypatch):
    """The CPU twin: C (``noise.c_philox``, built where a compiler is) or the NumPy fallback."""
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1" if request.param == "c" else "0")
    if request.param == "c" and noise.c_philox() is None:
        pytest.skip("no C compiler: the C twin cannot be built here (test_c_twin_builds_where_a_compiler_is)")
    return request.param


@pytest.mark.skipif(cbuild.c_compiler() is None, reason="no C compiler on PATH")
def test_c_twin_builds_where_a_compiler_is(monkeypatch):
    """With a C compiler on PATH the twin is the C one (no silent NumPy fallback), and
    ``GMVQ_C_PHILOX=0`` turns it off."""
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1")
    assert noise.c_philox() is not None
    monkeypatch.setenv(noise.C_PHILOX_ENV, "0")
    assert noise.c_philox() is None


def test_c_twin_that_cannot_build_warns_and_draws_the_same_words(monkeypatch):
    """A compiler that fails: one warning naming the cause and the way out, then the NumPy fallback (the
    same words; the noise from NumPy's logs, checked against float64)."""
    args = (5, 37, 2**64 - 3, 2**32 + 3)
    want = philox_words_numpy(*args)
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(cbuild, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match=r"could not be built.*/nonexistent/cc.*GMVQ_C_PHILOX=0"):
        assert noise.c_philox() is None
    np.testing.assert_array_equal(philox_words_numpy(*args), want)
    assert_matches_float64(torch.from_numpy(want.astype(np.int64)), gumbel_noise_numpy(*args))


@pytest.mark.skipif(cbuild.c_compiler() is None, reason="no C compiler on PATH")
def test_c_twin_builds_where_the_cache_cannot_be_written(monkeypatch, tmp_path):
    """A TRITON_CACHE_DIR that cannot be made (here it lies under a regular file): the twin is still the C
    one, built into a directory of the process's own, without a warning, and draws the same words."""
    import warnings

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cbuild, "_LOADED", {})
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = noise.c_philox()
    assert lib is not None and os.path.dirname(lib._name) == cbuild._PRIVATE, lib
    args = (5, 37, 2**64 - 3, 2**32 + 3)
    c_words = philox_words_numpy(*args)
    monkeypatch.setenv(noise.C_PHILOX_ENV, "0")
    np.testing.assert_array_equal(c_words, philox_words_numpy(*args))


@pytest.mark.parametrize("seed,N,K,row_offset", TWIN_CASES + [(0xFFFFFFFB, 6, 9, 0), (2**64 - 1, 3, 5, 2**40 - 1)])
def test_c_and_numpy_twins_draw_the_same_words(seed, N, K, row_offset, monkeypatch):
    """The same words; the noise of each within 4·10⁻⁷ of the exact transform (relative to max(|g|, 1)),
    so within 10⁻⁶·(1 + |g|) of each other (their logs differ by ulps)."""
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1")
    if noise.c_philox() is None:
        pytest.skip("no C compiler")
    c_words, c_noise = philox_words_numpy(N, K, seed, row_offset), gumbel_noise_numpy(N, K, seed, row_offset)
    monkeypatch.setenv(noise.C_PHILOX_ENV, "0")
    np.testing.assert_array_equal(c_words, philox_words_numpy(N, K, seed, row_offset))
    torch.testing.assert_close(c_noise, gumbel_noise_numpy(N, K, seed, row_offset), rtol=1e-6, atol=1e-6)


def test_c_twin_is_the_same_on_any_thread_count(monkeypatch):
    """The C twin's rows go to torch's OpenMP threads: one thread and two draw the same bits."""
    monkeypatch.setenv(noise.C_PHILOX_ENV, "1")
    if noise.c_philox() is None:
        pytest.skip("no C compiler")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gumbel_noise_numpy(300, 1000, 77, 2**33), philox_words_numpy(300, 1000, 77, 2**33)
        torch.set_num_threads(2)
        two = gumbel_noise_numpy(300, 1000, 77, 2**33), philox_words_numpy(300, 1000, 77, 2**33)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("seed,N,K,row_offset", TWIN_CASES)
def test_numpy_twin_words_match_exact_philox(seed, N, K, row_offset, rounds):
    """Word i of call j = k div 4 for row n, counter (j, n mod 2³², n div 2³², 0) and key (seed mod 2³²,
    seed div 2³²), against Python integers, with either rounds."""
    w = philox_words_numpy(N, K, seed, row_offset)
    assert w.shape == (N, K) and w.dtype == np.uint64
    for n in (0, N // 2, N - 1):
        for k in (0, K // 2, K - 1):
            r = n + row_offset
            want = philox_exact([k // 4, r & 0xFFFFFFFF, r >> 32, 0], [seed & 0xFFFFFFFF, seed >> 32])[k % 4]
            assert int(w[n, k]) == want, (n, k)


def test_numpy_twin_work_arrays_are_per_thread_and_reused_safely(rounds):
    """The twin keeps its NumPy rounds' work arrays per thread from call to call (noise._work_arrays):
    calls of other shapes in between, and other threads drawing at the same time, leave every call's
    words those of a call alone (checked against exact Philox above); the C twin, which other threads
    may run at once (ctypes lets go of the GIL), likewise."""
    from concurrent.futures import ThreadPoolExecutor

    shapes = [(300, 1000, 77, 0), (3, 7, 5, 2**32 + 1), (40, 129, 2**64 - 3, 9)]
    want = {s: philox_words_numpy(*s) for s in shapes}

    def draws(i):
        for j in range(6):
            shape = shapes[(i + j) % len(shapes)]
            np.testing.assert_array_equal(philox_words_numpy(*shape), want[shape])
        return True

    assert draws(0)
    with ThreadPoolExecutor(3) as pool:
        assert all(pool.map(draws, range(6)))


@pytest.mark.parametrize("seed,N,K,row_offset", TWIN_CASES)
def test_cpu_twin_noise_is_the_transform_of_the_words(seed, N, K, row_offset, rounds):
    """``gumbel_noise`` on a CPU without the interpreter (the path the tests' interpreter hides) is the
    transform of the twin's words, bit for bit: by the C twin ``words_to_gumbel``'s, by the NumPy
    fallback ``bits_to_gumbel_numpy``'s, within 10⁻⁶·(1 + |g|) of the former."""
    g = gumbel_noise_numpy(N, K, seed, row_offset)
    words = philox_words_numpy(N, K, seed, row_offset)
    in_torch = words_to_gumbel(torch.from_numpy(words.astype(np.int64)))
    assert g.shape == (N, K) and g.dtype == torch.float32 and g.is_contiguous()
    if rounds == "c":
        assert torch.equal(g, in_torch)
    else:
        assert torch.equal(g, torch.from_numpy(bits_to_gumbel_numpy((words >> np.uint64(9)).astype(np.float32))))
        torch.testing.assert_close(g, in_torch, rtol=1e-6, atol=1e-6)


def test_gumbel_noise_grid_fits_a_gpu(monkeypatch):
    """gumbel_noise's kernel grid within a GPU's limits: past noise.MAX_GRID_Y (65535) code blocks, which a
    grid's second axis cannot take (K ≥ 2²³: the launch failed), one axis (FLAT). The interpreter does not
    check grids, so the launches are recorded here, not run."""
    grids = []

    class Record:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.append((grid, kwargs["FLAT"]))

    monkeypatch.setattr(noise, "can_use_triton", lambda device: True)
    monkeypatch.setattr(noise, "_gumbel_noise_kernel", Record())
    for interpret, N, K, flat in [(False, 2, 2**24, True), (True, 3, 2**21, True), (False, 2**22, 16, False),
                                  (False, 5, 65535 * 128, False)]:
        monkeypatch.setattr(noise, "INTERPRET", interpret)
        noise.gumbel_noise(N, K, seed=1)
        block_n, block_k = (16, 16) if interpret else noise.NOISE_BLOCKS
        grid = grids[-1][0]
        assert grids[-1][1] == flat and grid[0] < 2**31 and all(g <= 65535 for g in grid[1:]), grids[-1]
        assert math.prod(grid) == -(-N // block_n) * -(-K // block_k), grid


def test_gumbel_noise_flat_grid_draws_the_same_noise(monkeypatch, device):
    """The one-axis grid (noise.MAX_GRID_Y, forced at a small K) draws the same bits as the usual one."""
    want = gk.gumbel_noise(19, 70, seed=5, device=device, row_offset=3)
    monkeypatch.setattr(noise, "MAX_GRID_Y", 1)
    assert torch.equal(gk.gumbel_noise(19, 70, seed=5, device=device, row_offset=3), want)
