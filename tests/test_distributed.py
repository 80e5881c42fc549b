"""Data parallel q̄: two gloo processes on CPU against one process on the global batch (issue 6).

Each rank holds an uneven slice of the batch (5 and 8 rows). Rank loss: β·KL(q̄_global ‖ π) + the rank's
own terms; after averaging parameter gradients over ranks (what DDP does) they must equal one process's
on the global batch with loss β·KL(q̄_global ‖ π) + the mean over ranks of the per-rank terms. Input
gradients on a rank are W times the single process's (the global KL term counted once per rank).
"""
import copy
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gmvq_kernels as gk

SLICES = [(0, 5), (5, 13)]
N, K, D, BETA = 13, 11, 3, 1.5


def problem(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    m = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
    lv = (0.3 * torch.randn(K, generator=g, dtype=torch.float64)).to(torch.float32 if dtype != torch.float64 else dtype)
    lp = torch.randn(K, generator=g, dtype=torch.float64).to(lv.dtype)
    noise = gk.gumbel_noise(N, K, seed=4).to(lv.dtype)
    return x, m, lv, lp, noise


def rank_terms(out):
    return out.latent_nll.mean() + out.quantized.double().square().mean() + 0.1 * out.entropy.mean()


def exit_worker():
    """End a spawned rank once its results are saved, without the interpreter's teardown: torch's
    threads (torch.compile, gloo) were destroyed while joinable there, and std::terminate aborted a
    rank after its work had finished (CI, twice across sessions; "terminate called without an active
    exception"). The results file and the exit code 0 stay what the test checks."""
    os._exit(0)


def worker(rank, world, init_file, impl, dtype, compiled, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, m, lv, lp, noise = problem(dtype)
    lo, hi = SLICES[rank]
    leaves = [t.clone().requires_grad_() for t in (x[lo:hi], m, lv, lp)]
    fn = lambda *t: gk.gmvq(*t, tau=0.7, noise=noise[lo:hi], impl=impl, process_group=dist.group.WORLD)  # noqa: E731
    if compiled:  # the kernels and the all-reduce are custom ops: one graph, no breaks
        fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = fn(*leaves)
    loss = BETA * gk.kl_to_prior(out.agg_posterior, leaves[3]) + rank_terms(out)
    loss.backward()
    grads = [t.grad.clone() for t in leaves]
    for gr in grads[1:]:  # DDP: average parameter gradients over ranks
        dist.all_reduce(gr)
        gr /= world
    torch.save(dict(agg=out.agg_posterior.detach(), grads=grads), f"{result_file}.{rank}")
    dist.barrier()  # no rank tears gloo down while the other is still in a collective
    dist.destroy_process_group()
    exit_worker()


def single_process(impl, dtype):
    x, m, lv, lp, noise = problem(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, m, lv, lp)]
    outs = [gk.gmvq(leaves[0][lo:hi], *leaves[1:], tau=0.7, noise=noise[lo:hi], impl=impl) for lo, hi in SLICES]
    agg = sum(o.agg_posterior * (hi - lo) for o, (lo, hi) in zip(outs, SLICES)) / N
    loss = BETA * gk.kl_to_prior(agg, leaves[3]) + sum(rank_terms(o) for o in outs) / len(SLICES)
    loss.backward()
    return agg.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("impl, dtype, tol, compiled", [("reference", torch.float64, 1e-12, False),
                                                        ("torch", torch.float64, 1e-12, False),
                                                        ("triton", torch.float32, 2e-5, False),
                                                        ("triton", torch.float32, 2e-5, True)])
def test_two_rank_gloo_matches_single_process(impl, dtype, tol, compiled):
    if impl == "triton" and not gk.functional.can_use_triton(torch.device("cpu")):
        pytest.skip("triton on CPU needs the interpreter")
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "res")
        mp.spawn(worker, args=(2, init_file, impl, dtype, compiled, result), nprocs=2, join=True)
        ranks = [torch.load(f"{result}.{r}") for r in range(2)]
    agg, grads = single_process(impl, dtype)
    W = 2
    for r, (lo, hi) in enumerate(SLICES):
        torch.testing.assert_close(ranks[r]["agg"], agg, rtol=tol, atol=tol)
        torch.testing.assert_close(ranks[r]["grads"][0] / W, grads[0][lo:hi], rtol=tol, atol=tol)
        for name, got, want in zip(["means", "log_var", "log_prior"], ranks[r]["grads"][1:], grads[1:]):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def two_heads(x):
    """(N, 2D) vectors for ``separate_heads``: x and x in reverse row order as the two heads' pieces."""
    return torch.cat([x, x.flip(0)], 1)


def separate_heads(**kw):
    torch.manual_seed(1)
    return gk.GaussianMixtureVQ(2 * D, K, heads=2, codebook_dim=D, separate_codebook_per_head=True, seed=11,
                                impl="reference", return_loss_breakdown=True, **kw)


def module_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, *_ = problem(torch.float32)
    torch.manual_seed(0)  # the same means on both ranks, as DDP would broadcast them
    vq = gk.GaussianMixtureVQ(D, K, seed=11, impl="reference", return_loss_breakdown=True)  # same seed, rows
    compiled = copy.deepcopy(vq)
    compiled.forward = torch.compile(compiled.forward, fullgraph=True, backend="aot_eager")
    out, out_c = vq(x), compiled(x)
    given = vq(x, seed=5).quantized.detach()  # a forward's own seed is shifted per rank too
    lo, hi = SLICES[rank]  # separate codebooks on the rank's own rows: each head's q̄ synced
    kl_separate = separate_heads()(two_heads(x)[lo:hi]).terms["kl"]
    torch.save(dict(quantized=out.quantized.detach(), kl=out.terms["kl"], quantized_c=out_c.quantized.detach(),
                    kl_c=out_c.terms["kl"], given=given, kl_separate=kl_separate), f"{result_file}.{rank}")
    dist.barrier()  # no rank tears gloo down while the other is still in a collective
    dist.destroy_process_group()
    exit_worker()


def test_module_ranks_draw_distinct_noise_and_share_q_bar():
    """Under data parallel the module syncs q̄ by itself and gives rank r the seed 11 + r·2⁴⁰ (and 5 + r·2⁴⁰
    for a forward's seed=5): equal rows on two ranks must not get equal noise (equal seeds everywhere are
    the common DDP setup). With separate codebooks each head's q̄ is the global batch's: on two ranks'
    uneven slices the KL term is one process's on the whole batch."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "res")
        mp.spawn(module_worker, args=(2, init_file, result), nprocs=2, join=True)
        ranks = [torch.load(f"{result}.{r}") for r in range(2)]
    x, *_ = problem(torch.float32)
    torch.manual_seed(0)
    vq = gk.GaussianMixtureVQ(D, K, seed=11, impl="reference")
    for r in range(2):
        want = gk.gmvq(x, vq.means, vq.log_var, seed=11 + (r << 40), impl="reference").quantized
        for key in ("quantized", "quantized_c"):  # eager and compiled (fullgraph) alike
            torch.testing.assert_close(ranks[r][key], want, rtol=0, atol=0)
        want = gk.gmvq(x, vq.means, vq.log_var, seed=5 + (r << 40), impl="reference").quantized
        torch.testing.assert_close(ranks[r]["given"], want, rtol=0, atol=0)
    assert not torch.equal(ranks[0]["quantized"], ranks[1]["quantized"])
    assert ranks[0]["kl"] == ranks[1]["kl"] == ranks[0]["kl_c"] == ranks[1]["kl_c"]  # one global q̄
    lo, hi = SLICES[0]
    whole = separate_heads(sync_agg_posterior=False)(two_heads(x)).terms["kl"]
    alone = separate_heads(sync_agg_posterior=False)(two_heads(x)[lo:hi]).terms["kl"]
    for r in range(2):
        torch.testing.assert_close(ranks[r]["kl_separate"], whole, rtol=1e-6, atol=0)
    assert not torch.allclose(alone, whole, rtol=1e-3)  # a rank's own rows would give another KL


def fsdp_worker(rank, world, init_file, result_file):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = lambda: torch.nn.Sequential(torch.nn.Linear(D, 8), gk.GaussianMixtureVQ(  # noqa: E731
        8, K, seed=11, heads=2, codebook_dim=3, learnable_prior=True))
    with torch.device("meta"):  # FSDP2's recipe: shard, then allocate, then initialise
        sharded = model()
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(sharded[1], mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    sharded.to_empty(device="cpu")
    for m in sharded.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in sharded.state_dict().items()}
    plain = model()
    plain.load_state_dict(full)
    lo, hi = SLICES[rank]
    x = problem(torch.float32)[0][lo:hi]
    for net in (sharded, plain):
        quantized, _codes, loss = net(x)
        (quantized.square().mean() + loss).backward()
    grads = {}
    for (name, p), ref in zip(sharded.named_parameters(), plain.parameters()):
        g = ref.grad.clone()
        dist.all_reduce(g)  # DDP's average over ranks
        grads[name] = (p.grad.full_tensor(), g / world)
    # torch.distributed.checkpoint: a sharded copy built otherwise (another seed) resumes the noise
    dcp.save(get_model_state_dict(sharded), checkpoint_id=f"{result_file}.dcp")
    resumed = torch.nn.Sequential(torch.nn.Linear(D, 8), gk.GaussianMixtureVQ(8, K, seed=5, heads=2, codebook_dim=3,
                                                                             learnable_prior=True))
    fully_shard(resumed[1], mesh=mesh)
    fully_shard(resumed, mesh=mesh)
    state = get_model_state_dict(resumed)
    dcp.load(state, checkpoint_id=f"{result_file}.dcp")
    set_model_state_dict(resumed, state)
    with torch.no_grad():
        same_next_step = bool(torch.equal(resumed(x).quantized, sharded(x).quantized))
    torch.save(dict(grads=grads, full=full, same_next_step=same_next_step), f"{result_file}.{rank}")
    dist.barrier()
    dist.destroy_process_group()
    exit_worker()


def test_module_under_fsdp2_built_on_meta_trains_as_data_parallel():
    """FSDP2 (``fully_shard`` on a CPU mesh, gloo), the module built on the meta device and initialised
    by ``reset_parameters`` as FSDP2's recipe does: every parameter's gradient (sharded, gathered) equals
    the data-parallel average of an unsharded copy's, q̄ synced over both ranks in each. Saved and
    loaded with torch.distributed.checkpoint, a sharded copy built with another seed draws the next
    step's noise (the step counter travels in the checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "res")
        mp.spawn(fsdp_worker, args=(2, init_file, result), nprocs=2, join=True)
        ranks = [torch.load(f"{result}.{r}") for r in range(2)]
    assert sorted(ranks[0]["grads"]) == ["0.bias", "0.weight", "1._log_var", "1.log_prior", "1.means",
                                         "1.project_in.bias", "1.project_in.weight", "1.project_out.bias",
                                         "1.project_out.weight"]
    full = ranks[0]["full"]
    assert bool(full["1.initted"]) and torch.equal(full["1._log_var"], torch.full((K,), math.log(0.1)))
    assert full["1.means"].abs().max() < 10 and int(full["1._extra_state"]) == 11  # initialised
    for rank in ranks:
        assert rank["same_next_step"]
        for name, (got, want) in rank["grads"].items():
            assert want.abs().max() > 0, name
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def kmeans_worker(rank, world, init_file, sync, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = kmeans_batch(rank)
    vq = gk.GaussianMixtureVQ(2, 3, kmeans_init=True, seed=100 + rank, impl="reference", sync_agg_posterior=sync)
    vq(x)
    torch.save(vq.means.detach().clone(), f"{result_file}.{rank}")
    dist.barrier()
    dist.destroy_process_group()
    exit_worker()


def kmeans_batch(rank):
    """Three clusters, placed differently on each rank: each rank's own fit differs."""
    g = torch.Generator().manual_seed(rank)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]]) * (1 + rank)
    return centers[torch.randint(0, 3, (60,), generator=g)] + 0.1 * torch.randn(60, 2, generator=g)


@pytest.mark.parametrize("sync", [None, False])
def test_module_kmeans_init_agrees_across_ranks(sync):
    """k-means on the first batch under data parallel: every rank ends with rank 0's fit (each rank's
    own would leave DDP's replicas with different codebooks for good); without q̄ sync, each its own."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "res")
        mp.spawn(kmeans_worker, args=(2, init_file, sync, result), nprocs=2, join=True)
        ranks = [torch.load(f"{result}.{r}") for r in range(2)]
    for r in range(2):
        own = gk.GaussianMixtureVQ(2, 3, kmeans_init=True, seed=100 + r, impl="reference")
        own.init_codebook(kmeans_batch(r))
        want = own.means.detach() if sync is False or r == 0 else ranks[0]
        assert torch.equal(ranks[r], want), r
    assert torch.equal(ranks[0], ranks[1]) == (sync is None)
