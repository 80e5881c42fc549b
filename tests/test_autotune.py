"""Launch-config sources (override > this process's autotune > config.TUNED > the tables, with their
arch family's and small-shared entries), the opt-in autotuner's selection, and the writer of config.py's
TUNED block."""
import importlib.util
import math
from dataclasses import astuple
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmvq_kernels import autotune, config
from gmvq_kernels.config import KC
from gmvq_kernels.spec import component_terms


@pytest.fixture
def gpu_like(monkeypatch):
    """Config picking as on an sm_90 GPU ("cuda" devices), with empty tuned tables."""
    monkeypatch.setattr(config, "INTERPRET", False)
    monkeypatch.setattr(config, "arch", lambda device: "sm_90" if str(device).startswith("cuda") else None)
    monkeypatch.setattr(config, "shared_limit", lambda device: 232448 if str(device).startswith("cuda") else None)
    monkeypatch.setattr(config, "TUNED", {})
    monkeypatch.setattr(config, "RUNTIME_TUNED", {})


def test_config_sources_in_order(gpu_like):
    bf16 = torch.bfloat16
    default = config.table_config("row", 64, bf16)
    assert config.row_config(64, bf16, "cuda") == default
    key = config.tuned_key("row", 48, bf16, "cuda")
    assert key == ("sm_90", "half", "row", 64)  # D = 48 is served by the table row of D ≤ 64
    config.TUNED[key] = KC(32, 64, 4, 2)
    assert config.row_config(64, bf16, "cuda") == KC(32, 64, 4, 2)  # same bucket
    assert config.row_config(100, bf16, "cuda") == config.table_config("row", 100, bf16)  # the next one
    assert config.row_config(64, torch.float32, "cuda") == config.table_config("row", 64, torch.float32)
    assert config.row_config(64, bf16, "cpu") == default and config.row_config(64, bf16) == default
    config.TUNED[("sm_80", "half", "row", 256)] = KC(16, 16, 1, 1)  # another arch: never used here
    assert config.row_config(200, bf16, "cuda") == config.table_config("row", 200, bf16)
    config.RUNTIME_TUNED[key] = KC(64, 64, 4, 2)
    assert config.row_config(64, bf16, "cuda") == KC(64, 64, 4, 2)
    with config.override(row=KC(32, 32, 2, 1)):
        assert config.row_config(64, bf16, "cuda") == KC(32, 32, 2, 1)
    assert config.col_config(64, bf16, "cuda") == config.table_config("col", 64, bf16)


def test_small_shared_memory_gpus_take_their_own_configs(gpu_like, monkeypatch):
    """A GPU whose blocks get 99 KiB of shared memory (sm_86/89/120) takes SMALL_SHARED_CONFIGS where a
    bucket has an entry, the tables elsewhere, and never sm_90's tuned entries; tests/compile_kernels.py
    builds those configs for sm_86 and checks that they fit."""
    bf16 = torch.bfloat16
    monkeypatch.setattr(config, "arch", lambda device: "sm_86" if str(device).startswith("cuda") else None)
    monkeypatch.setattr(config, "shared_limit", lambda device: config.SMALL_SHARED if str(device).startswith("cuda")
                        else None)
    config.TUNED[("sm_90", "half", "row", 256)] = KC(16, 16, 1, 1)  # sm_90's: not for this GPU
    assert config.SMALL_SHARED_CONFIGS, "no small-shared entries"
    for (kind_dt, kind, limit), small in config.SMALL_SHARED_CONFIGS.items():
        dtype = torch.float32 if kind_dt == "fp32" else bf16
        big = config.table_config(kind, limit, dtype)
        assert small != big, (kind_dt, kind, limit)
        assert config._pick(kind, limit, dtype, "cuda") == small
        assert config._pick(kind, limit, dtype, "cpu") == big
        assert autotune.candidates(kind, limit, dtype, "cuda")[0] == small
    # a bucket without an entry keeps the table's config (half inputs at D <= 64 fit 99 KiB)
    assert ("half", "row", 64) not in config.SMALL_SHARED_CONFIGS
    assert config.row_config(64, bf16, "cuda") == config.table_config("row", 64, bf16)
    # the Δ pass of fp32 inputs follows the row kernels' config on this GPU too (Y − Δy cancels exactly)
    assert config.delta_config(128, torch.float32, "cuda") == config.row_config(128, torch.float32, "cuda")
    # fp32 at D > 256 fits no tile there: the forward refuses it before any launch, naming x
    x = torch.zeros(4, config.SMALL_SHARED_MAX_FP32_D + 1)
    with pytest.raises(ValueError, match=r"x: fp32 latents with D > 256 .*101376 B.*got D = 257"):
        config.check_shared_memory(x.dtype, x.shape[1], "cuda")
    config.check_shared_memory(torch.bfloat16, x.shape[1], "cuda")  # half inputs fit
    config.check_shared_memory(x.dtype, config.SMALL_SHARED_MAX_FP32_D, "cuda")
    # the limit decides, not the arch: a GPU with an A100's budget or more takes the tables
    monkeypatch.setattr(config, "shared_limit", lambda device: config.FULL_TABLE_SHARED)
    assert ("half", "colsum", 256) in config.SMALL_SHARED_CONFIGS
    assert config.colsum_config(256, bf16, "cuda") == config.table_config("colsum", 256, bf16)
    config.check_shared_memory(x.dtype, x.shape[1], "cuda")


@pytest.mark.parametrize("arch,shared", [("sm_80", 166912), ("sm_86", config.SMALL_SHARED), ("sm_100", 232448),
                                         ("sm_120", config.SMALL_SHARED), ("sm_90", 232448)])
def test_arch_families_take_their_own_entries(gpu_like, monkeypatch, arch, shared):
    """ARCH_CONFIGS replace the tables' entries whose tiles overflow the registers of another family of
    GPUs (e.g. ptxas for sm_80 fell back to 32 registers in bf16's dμ at D = 256; triton 3.8's for sm_100
    refused fp32's), on the 99 KiB parts before SMALL_SHARED_CONFIGS; sm_90 and off-CUDA picks keep the
    tables."""
    monkeypatch.setattr(config, "arch", lambda device: arch if str(device).startswith("cuda") else None)
    monkeypatch.setattr(config, "shared_limit", lambda device: shared if str(device).startswith("cuda") else None)
    family = {"sm_80": "mma", "sm_86": "mma", "sm_120": "mma", "sm_100": "tmem", "sm_90": "wgmma"}[arch]
    assert config.arch_family("cuda") == family and config.arch_family("cpu") is None
    assert config.tensor_memory_arch("cuda") == (family == "tmem")
    # GMVQ_DEFER_DQ_128=1 widens the dx pass's Δq to BLOCK_D = 128 on sm_90 and off CUDA only (sm_80's dx
    # would fall back to 32 registers there)
    monkeypatch.setenv(config.DEFER_DQ_128_ENV, "1")
    assert config.defer_dq_max_block_d("cuda") == (128 if family == "wgmma" else 64)
    assert config.defer_dq_max_block_d("cpu") == 128
    assert autotune.training_kinds(torch.bfloat16, 128, "cuda") == (
        ("row", "col", "colsum") if family == "wgmma" else ("row", "col", "colsum", "delta"))
    monkeypatch.setenv(config.DEFER_DQ_128_ENV, "0")
    assert config.defer_dq_max_block_d("cuda") == config.defer_dq_max_block_d("cpu") == 64
    assert {f for f, *_ in config.ARCH_CONFIGS} == {"mma", "tmem"}
    small = shared < config.FULL_TABLE_SHARED
    for (fam, kind_dt, kind, limit), own in config.ARCH_CONFIGS.items():
        dtype = torch.float32 if kind_dt == "fp32" else torch.bfloat16
        table = config._table_row(kind, limit, dtype)[1]
        assert own != table, (fam, kind_dt, kind, limit)
        # a 99 KiB part never holds a small-shared entry its family's entry would hide
        assert fam != "mma" or (kind_dt, kind, limit) not in config.SMALL_SHARED_CONFIGS
        assert config._pick(kind, limit, dtype, "cpu") == table
        # this GPU's family's entry, else its small-shared one, else the table's
        expected = (config.ARCH_CONFIGS.get((family, kind_dt, kind, limit))
                    or (config.SMALL_SHARED_CONFIGS.get((kind_dt, kind, limit)) if small else None) or table)
        assert expected == table or family != "wgmma"  # sm_90 takes the tables
        assert config._pick(kind, limit, dtype, "cuda") == expected
        assert autotune.candidates(kind, limit, dtype, "cuda")[0] == expected
    # fp32's dμ at 128 < D ≤ 256: the table's 16 × 64 on sm_90 only
    assert config.col_config(200, torch.float32, "cuda") == (
        KC(16, 64, 4, 1) if arch == "sm_90" else KC(16, 16, 4, 1))
    # half inputs at D ≤ 128 keep the tables' tiles everywhere (or the small-shared ones where they have one),
    # but dμ's at 64 < D ≤ 128 on the mma parts (sm_80's ptxas left the table's at 32 registers since item 38;
    # at D ≤ 64 the table's compiles without spills there, its own bucket keeps it)
    assert config.row_config(64, torch.bfloat16, "cuda") == config._table_row("row", 64, torch.bfloat16)[1]
    assert config.col_config(64, torch.bfloat16, "cuda") == config._table_row("col", 64, torch.bfloat16)[1]
    assert config.col_config(128, torch.bfloat16, "cuda") == (
        KC(16, 128, 8, 2) if family == "mma" else config._table_row("col", 128, torch.bfloat16)[1])
    colsum = config._table_row("colsum", 128, torch.bfloat16)[1]
    if small:
        colsum = config.SMALL_SHARED_CONFIGS[("half", "colsum", 128)]
    assert config.colsum_config(128, torch.bfloat16, "cuda") == colsum


def test_forward_refuses_fp32_that_fits_no_tile_of_a_99_kib_gpu(monkeypatch):
    import gmvq_kernels as gk

    monkeypatch.setattr(config, "shared_limit", lambda device: config.SMALL_SHARED)
    D = config.SMALL_SHARED_MAX_FP32_D + 1
    x, means, log_var = torch.zeros(4, D), torch.zeros(8, D), torch.zeros(8)
    with pytest.raises(ValueError, match="x: fp32 latents with D > 256"):
        gk.gmvq(x, means, log_var, impl="triton")


def test_pick_fastest_skips_configs_that_do_not_run():
    a, b, c = KC(16, 16, 1, 1), KC(32, 16, 1, 1), KC(64, 16, 1, 1)

    def time_ms(cfg):
        if cfg == b:
            raise RuntimeError("out of resources")
        return {a: 2.0, c: 1.5}[cfg]
    best, times = autotune.pick_fastest([a, b, c], time_ms)
    assert best == c and times[b] == math.inf and times[a] == 2.0
    with pytest.raises(RuntimeError, match="no candidate config ran.*out of resources") as err:
        autotune.pick_fastest([b], time_ms)
    assert str(err.value.__cause__) == "out of resources"  # the cause is kept, for a failure not the tiles'


def test_tune_training_times_every_candidate_with_the_kernels(monkeypatch):
    """Each candidate really runs the fused fwd + bwd (the interpreter on a CPU); each kind's winner is in
    force while the next kind's candidates are timed; the fastest of each kind wins."""
    monkeypatch.setattr(config, "CANDIDATES", {"row": (KC(16, 16, 1, 1), KC(32, 16, 1, 1)),
                                               "col": (KC(16, 16, 1, 1), KC(16, 32, 1, 1)),
                                               "colsum": (KC(16, 16, 1, 1), KC(32, 32, 1, 1)),
                                               "delta": (KC(16, 16, 1, 1), KC(32, 16, 1, 1))})
    if not config.INTERPRET:
        pytest.skip("the kernels run here through Triton's interpreter")
    # bf16: half inputs tune the Δ kernel's config too (fp32 keeps the row config there: see below);
    # at D = 72 (BLOCK_D 128) the Δ pass runs (at D ≤ 64 the dx pass takes Δq: no Δ launch to time)
    D = 72
    x, means = torch.randn(20, D).bfloat16(), torch.randn(24, D).bfloat16()
    a, b, v = (t.contiguous() for t in component_terms(torch.zeros(24), torch.full((24,), -math.log(24)), D))
    seen = []
    fast = {("row", KC(32, 16, 1, 1)): 1.0, ("col", KC(16, 32, 1, 1)): 1.0, ("colsum", KC(32, 32, 1, 1)): 1.0,
            ("delta", KC(32, 16, 1, 1)): 1.0}

    def fake_time(step):
        now = {k: getattr(config, k + "_config")(D, x.dtype) for k in autotune.TRAINING_KINDS}
        step()
        kind = autotune.TRAINING_KINDS[len(seen) // 3]
        seen.append(now)
        return fast.get((kind, now[kind]), 2.0)
    res = autotune.tune_training(x, means, a, b, v, tau=0.5, hard=True, dot_precision="ieee", time_fn=fake_time)
    keys = {k: config.tuned_key(k, D, x.dtype, x.device) for k in autotune.TRAINING_KINDS}
    assert {k: res[key][0] for k, key in keys.items()} == {"row": KC(32, 16, 1, 1), "col": KC(16, 32, 1, 1),
                                                           "colsum": KC(32, 32, 1, 1), "delta": KC(32, 16, 1, 1)}
    assert len(seen) == 12  # 3 candidates of each kind (the table default first), kind after kind
    assert {s["row"] for s in seen[:3]} == {config.table_config("row", D, x.dtype), KC(16, 16, 1, 1),
                                            KC(32, 16, 1, 1)}
    assert all(s["row"] == KC(32, 16, 1, 1) for s in seen[3:])
    assert all(s["col"] == KC(16, 32, 1, 1) for s in seen[6:])
    assert {s["colsum"] for s in seen[:6]} == {config.INTERPRET_CONFIG}  # untuned yet: the plain pick
    assert all(s["colsum"] == KC(32, 32, 1, 1) for s in seen[9:])
    # fp32 inputs: the Δ pass keeps the row kernels' tiles (Y − Δy cancels exactly), so no Δ tuning;
    # half inputs at D ≤ 64 have no Δ pass in training
    assert autotune.training_kinds(torch.float32, D) == ("row", "col", "colsum")
    assert autotune.training_kinds(torch.bfloat16, 64) == ("row", "col", "colsum")
    assert autotune.training_kinds(torch.bfloat16, 128) == ("row", "col", "colsum", "delta")
    with config.override(row=KC(16, 16, 1, 1), delta=KC(32, 16, 1, 1)):
        assert config.delta_config(8, torch.float32) == KC(16, 16, 1, 1)
        assert config.delta_config(8, torch.bfloat16) == KC(32, 16, 1, 1)


def test_autotune_is_opt_in_and_runs_once_per_bucket(gpu_like, monkeypatch):
    calls = []
    key = ("sm_90", "half", "row", 64)

    def tune():
        calls.append(1)
        kind_dt, limit = config.bucket("col", 64, torch.bfloat16)  # dμ's bucket serving D = 64
        return {key: (KC(64, 64, 4, 2), {}), ("sm_90", kind_dt, "col", limit): (KC(32, 64, 4, 2), {})}
    cuda_x = SimpleNamespace(device=torch.device("cuda"), shape=(10, 64), dtype=torch.bfloat16)
    monkeypatch.delenv(autotune.ENV, raising=False)
    autotune.ensure_tuned(("row", "col"), cuda_x, tune)
    assert calls == [] and config.RUNTIME_TUNED == {}
    monkeypatch.setenv(autotune.ENV, "1")
    autotune.ensure_tuned(("row", "col"), torch.zeros(10, 64), tune)  # CPU tensors: never
    assert calls == []
    autotune.ensure_tuned(("row", "col"), cuda_x, tune)
    autotune.ensure_tuned(("row", "col"), cuda_x, tune)
    assert calls == [1] and config.RUNTIME_TUNED[key] == KC(64, 64, 4, 2)
    assert config.row_config(64, torch.bfloat16, "cuda") == KC(64, 64, 4, 2)


def outside_block(text):
    """config.py's text without its TUNED block."""
    return text[:text.index(autotune.BEGIN)] + text[text.index(autotune.END):]


def test_write_tuned_updates_the_block_of_config_py(tmp_path):
    path = tmp_path / "config.py"
    shipped = open(config.__file__).read()  # its block emptied: the writer's own entries alone
    path.write_text(shipped[:shipped.index(autotune.BEGIN)] + f"{autotune.BEGIN}TUNED = {{}}\n"
                    + shipped[shipped.index(autotune.END):])

    def load():
        spec = importlib.util.spec_from_file_location("config_copy", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    assert load().TUNED == {}
    autotune.write_tuned(path, {("sm_90", "half", "row", 128): KC(128, 32, 8, 2)}, "first-stamp, H200 (test)")
    autotune.write_tuned(path, {("sm_90", "fp32", "col", 64): KC(32, 64, 4, 2),
                                ("sm_90", "half", "row", 128): KC(64, 16, 4, 2, maxnreg=168)}, "later")
    # a third write reads the register cap back from the text and keeps it
    autotune.write_tuned(path, {("sm_90", "half", "col", 256): KC(32, 128, 8, 2)}, "third")
    tuned = {key: astuple(cfg) for key, cfg in load().TUNED.items()}  # the copy has its own KernelConfig class
    assert tuned == {("sm_90", "half", "row", 128): (64, 16, 4, 2, 168),
                     ("sm_90", "fp32", "col", 64): (32, 64, 4, 2, None),
                     ("sm_90", "half", "col", 256): (32, 128, 8, 2, None)}
    text = path.read_text()
    assert "KC(32, 64, 4, 2),  # later" in text and "first-stamp" not in text  # replaced entry, new note
    assert "KC(64, 16, 4, 2, maxnreg=168),  # later" in text
    assert outside_block(text) == outside_block(open(config.__file__).read())  # nothing else changed


@pytest.mark.parametrize("N, K, splits", [(8192, 16384, 1), (8192, 65536, 2), (4096, 65536, 4), (2048, 262144, 8),
                                          (32768, 262144, 1), (8192, 1024, 1)])
def test_split_codes_only_splits_into_parts_of_16384_codes(monkeypatch, N, K, splits):
    """The split-K rule on an H200 (132 SMs, 64 × 32 row tiles): up to 2·SMs programs, but no split of
    fewer than config.SPLIT_MIN_CODES codes (timed: ≤ 8192 codes per split was slower, ≥ 16384 faster);
    the encode kernel (min_codes=0) splits whenever row blocks leave SMs idle."""
    monkeypatch.setattr(config, "sm_count", lambda device: 132)
    got, per_split = config.split_codes(N, K, 64, 32, torch.device("cuda"))
    assert got == splits and (got == 1 or per_split >= config.SPLIT_MIN_CODES == 16384)
    assert -(-K // per_split) == got  # every split has codes
    assert config.split_codes(8192, 1024, 64, 32, torch.device("cuda"), min_codes=0)[0] == 2


@settings(max_examples=300, deadline=None)
@given(N=st.integers(1, 2**20), K=st.integers(1, 2**20), block_n=st.sampled_from([16, 32, 64, 128, 256]),
       block_k=st.sampled_from([16, 32, 64, 128, 256, 512]), sms=st.integers(1, 200),
       min_codes=st.sampled_from([None, 0, 1, 16384]))
def test_every_split_holds_a_tile(N, K, block_n, block_k, sms, min_codes):
    """The kernels tell the compiler that a split's loop range is non-empty (tiles.nonempty_range, which
    keeps ptxas from serialising their wgmma); an empty split would then run its loop once on garbage.
    So every split that config.split_codes and config.split_rows make holds codes (rows), in whole
    tiles, and the splits cover all of K (N) exactly once."""
    dev = torch.device("cuda")
    with pytest.MonkeyPatch.context() as mp:  # hypothesis runs many examples per (function-scoped) fixture
        mp.setattr(config, "sm_count", lambda device: sms)
        code_splits, codes = config.split_codes(N, K, block_n, block_k, dev, min_codes=min_codes)
        row_splits, rows = config.split_rows(N, -(-K // block_k), block_n, dev)
    assert codes % block_k == 0 and (code_splits - 1) * codes < K <= code_splits * codes
    assert rows % block_n == 0 and (row_splits - 1) * rows < N <= row_splits * rows
