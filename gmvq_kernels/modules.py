"""``GaussianMixtureVQ``: the GM-VQ quantizer as an nn.Module, a drop-in for a VQ layer."""
import collections
import math
import numbers
import sys
from typing import NamedTuple, Optional

import torch
from torch import nn

from . import config
from .checks import IMPLS, LOG_VAR_LIMIT, check_codes, check_flag, check_int, check_number, check_tau, describe
from .functional import gmvq_decode, gmvq_encode, gmvq_with_sample, resolve_impl
from .losses import albo_loss, elbo_loss, kl_to_prior, perplexity
from .noise import as_int64
from .spec import compiler_marks, to_autocast


class QuantizerOutput(NamedTuple):
    """What ``GaussianMixtureVQ(x)`` returns: unpacks as vector-quantize-pytorch's ``VectorQuantize``
    (quantized, indices, loss)."""
    quantized: torch.Tensor  # same layout and dtype as the input
    codes: torch.Tensor      # input shape without the channel axis, int64
    loss: torch.Tensor       # the quantizer's loss (see GaussianMixtureVQ.forward); 0 in eval mode


class QuantizerOutputWithTerms(NamedTuple):
    """With ``return_loss_breakdown=True``: the same, plus the detached loss terms."""
    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    terms: dict  # latent_nll, kl, perplexity, log_likelihood, mixture_var, entropy (detached)


# vector-quantize-pytorch arguments with no GM-VQ counterpart: what to do instead
VQ_ARGUMENTS = {
    "decay": "GM-VQ has no EMA codebook: its means learn by gradient; drop decay",
    "ema_update": "GM-VQ has no EMA codebook: its means learn by gradient; drop ema_update",
    "commitment_weight": "the latent term gamma= plays the commitment loss's role; use gamma=",
    "threshold_ema_dead_code": "no dead-code replacement is needed (the aggregated-posterior KL, weighted by "
                               "beta=, keeps codes in use); drop threshold_ema_dead_code",
    "sample_codebook_temp": "use tau= (the Gumbel-softmax temperature; anneal it with tau_schedule)",
    "stochastic_sample_codes": "training always draws a Gumbel sample; drop stochastic_sample_codes",
    "learnable_codebook": "the codebook is always learned by gradient; drop learnable_codebook",
    "use_cosine_sim": "GM-VQ uses Gaussian (Euclidean) distances; cosine similarity is not supported",
    "layernorm_after_project_in": "not supported; normalise your latents before the quantizer",
    "orthogonal_reg_weight": "orthogonal regularisation is not supported",
    "channel_last": "the layout is channel-last by default; use accept_image_fmap=True for (B, D, H, W) or "
                    "channel_first=True for D on axis 1",
    "eps": "GM-VQ has no EMA codebook (eps smooths its counts); drop eps",
    "manual_ema_update": "GM-VQ has no EMA codebook: its means learn by gradient; drop manual_ema_update",
    "sync_update_v": "GM-VQ has no EMA codebook: its means learn by gradient; drop sync_update_v",
    "freeze_codebook": "freeze the codebook with vq.means.requires_grad_(False) (and the variances likewise)",
    "sync_kmeans": "under data parallel every rank takes rank 0's k-means fit; drop sync_kmeans",
    "sync_codebook": "the codebook learns by gradient, which data parallel averages, and q̄ is all-reduced "
                     "(sync_agg_posterior=); drop sync_codebook",
    "commitment_use_cross_entropy_loss": "there is no commitment loss: the latent term gamma= plays its role",
    "codebook_diversity_loss_weight": "the aggregated-posterior KL, weighted by beta=, keeps codes in use; drop "
                                      "codebook_diversity_loss_weight",
    "codebook_diversity_temperature": "the aggregated-posterior KL, weighted by beta=, keeps codes in use; drop "
                                      "codebook_diversity_temperature",
    "straight_through": "hard=True gives straight-through one-hot samples",
    "rotation_trick": "gradients reach the encoder through the Gumbel-softmax sample; the rotation trick is not "
                      "supported",
    "route_gradients_to_input": "gradients always reach the input through the Gumbel-softmax sample",
    "orthogonal_reg_active_codes_only": "orthogonal regularisation is not supported",
    "orthogonal_reg_max_codes": "orthogonal regularisation is not supported",
    "directional_reparam": "the directional reparameterisation is not supported",
    "directional_reparam_variance": "the directional reparameterisation is not supported",
    "affine_param": "the affine codebook parameterisation is not supported",
    "affine_param_batch_decay": "the affine codebook parameterisation is not supported",
    "affine_param_codebook_decay": "the affine codebook parameterisation is not supported",
    "sync_affine_param": "the affine codebook parameterisation is not supported",
    "vq_bridge": "not supported",
    "in_place_codebook_optimizer": "the codebook is a Parameter: train it with your own optimizer",
    "manual_in_place_optimizer_update": "the codebook is a Parameter: train it with your own optimizer",
}


# vector-quantize-pytorch forward arguments with no GM-VQ counterpart: what to do instead
VQ_FORWARD_ARGUMENTS = {
    "indices": "the cross-entropy against given codes is not supported",
    "topk": "one code per vector (argmax); top-k codes are not supported",
    "sample_codebook_temp": "set vq.tau, the Gumbel-softmax temperature (anneal it with tau_schedule)",
    "freeze_codebook": VQ_ARGUMENTS["freeze_codebook"],
    "codebook_transform_fn": "codebook transforms are not supported",
    **dict.fromkeys(("ema_update", "ema_update_weight", "accum_ema_update"),
                    "GM-VQ has no EMA codebook: its means learn by gradient"),
}


def _refuse(kwargs, answers, owner):
    """A TypeError for the first of ``kwargs`` (vector-quantize-pytorch arguments ``owner`` does not take):
    what to do instead where ``answers`` has it."""
    for name in kwargs:
        if name in answers:
            raise TypeError(f"{owner} does not take {name}: {answers[name]}")
        raise TypeError(f"{owner} got an unexpected keyword argument {name!r}")


# Defaults for the plain recipe ``loss = pixel-mean reconstruction + vq_loss`` (README, "Replacing a VQ
# layer"; tests/test_module.py trains it). The ALBO terms are nats per latent vector, orders of magnitude
# above a per-pixel mean: with γ = β = 1 the latent term wins, the encoder collapses onto one mean and the
# learned variances shrink with it (1 code of 512 used on digits, loss → −3). γ, β: the tuned quality
# sweep's best GM-VQ configuration (GM-VQ + Entropy, γ = 1, β = 8, soft samples: the lowest validation
# MSE on digits, 2 % above soft GM-VQ with β = 1 on the patches; results/quality-sweep-2026-11-30),
# whose reconstruction term is Σ over the 16 pixels a latent covers of (x − x̂)²/(2·0.01) = 800 × their
# mean, divided by that 800 for a per-pixel mean.
# In the recipe (2 seeds, soft): test MSE 0.019–0.021 with 241–275 codes of 512 on digits, against
# the former γ = 0.003, β = 0.1 at 0.023 / 351–369 codes and VectorQuantize at 0.022–0.023 / 114–115
# codes; on photo patches 0.0104–0.0106 / 268–280 against 0.013–0.014 and VectorQuantize's 0.0069–0.0072
# / 70–75. σ² = 0.1 at the start: with a fixed σ² = 1 the recipe used ≤ 3 codes (our reading: logit gaps
# of d/(2σ²) stay small beside the Gumbel noise, so the samples carry little about x). For the paper's
# scale (reconstruction in nats per latent vector) use gamma=1 and beta of 1 (GM-VQ) up to 8 (+ Entropy).
DEFAULT_GAMMA, DEFAULT_BETA, DEFAULT_INIT_LOG_VAR = 0.00125, 0.01, math.log(0.1)
RANK_SEED_SHIFT = 40  # rank r of a synced group draws with seed + t + r·2⁴⁰: streams never meet
# with separate codebooks head h draws with seed + h·2⁵⁶ (mod 2⁶⁴): apart from the steps' t (< 2⁴⁰) and the
# ranks' r·2⁴⁰ (r < 2¹⁶) for h < 2⁸ heads
HEAD_SEED_SHIFT, MAX_SEPARATE_HEADS = 56, 256
# how many seeds of calls that activation checkpointing may run again are kept for it (GaussianMixtureVQ._step_seed)
RECOMPUTE_SEEDS_KEPT = 1024
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)  # an extra_state counter's
# the detached batch means that return_loss_breakdown adds (GaussianMixtureVQ._terms)
TERM_NAMES = ("latent_nll", "kl", "perplexity", "log_likelihood", "mixture_var", "entropy", "loss")


def _sync_kmeans_pending(module, _incompatible_keys):
    if not module.initted.is_meta:  # a state_dict loaded into a module on meta (without assign) sets nothing
        module._kmeans_pending = not bool(module.initted)


def _padded_codes(keep, codes):
    """The (kept, heads) codes of the kept rows back in their places (masked_scatter fills them in row
    order), −1 at the padding: (N, heads)."""
    return torch.full((keep.shape[0], codes.shape[1]), -1, dtype=codes.dtype,
                      device=codes.device).masked_scatter(keep[:, None], codes)


def _check_seed(seed, also: str = ""):
    """The module's int seeds (the constructor's, a forward's): the step counter adds t and r·2⁴⁰ per rank
    to them in an int64, and 2⁶² leaves room for both. ``also``: what else the argument may be."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be None or an integer in [0, 2**62){also}; got {seed!r}")


def _backward_task() -> int:
    """The id of the autograd backward pass this thread runs in, where torch.utils.checkpoint reruns a
    checkpointed forward (both modes; checkpoint itself tells backward passes apart by this id), or −1
    outside one. −1 while torch.compile traces: a compiled region recomputes inside its own graph,
    with its inputs."""
    return -1 if torch.compiler.is_compiling() else torch._C._current_graph_task_id()


def _may_be_recomputed(rows: torch.Tensor, module: nn.Module) -> bool:
    """Whether activation checkpointing may run this training call again in the backward: a reentrant
    checkpoint runs the forward first with grad disabled; a non-reentrant one with its saved-tensor hook
    active, and then recomputes the calls that saved tensors (those that need grad). Others are not kept."""
    if torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooked = top_hooks is None or top_hooks(False) is not None
    return hooked and (rows.requires_grad or any(p.requires_grad for p in module.parameters()))


class GaussianMixtureVQ(nn.Module):
    """GM-VQ quantizer owning the codebook means (K, D) (per head with separate codebooks), log-variances and
    optionally prior logits.

    Args:
        dim: latent dimension D. codebook_size: number of codes K.
        tau: Gumbel-softmax temperature (set ``.tau`` each step to anneal, see ``tau_schedule``).
        hard: straight-through one-hot samples in training (default: the soft Gumbel-softmax sample,
            which had the lower validation MSE in every case of the tuned quality sweep).
        init_log_var: initial log σ² of every component (default log 0.1). per_component_variance: one λ per code
            (else one shared λ, the paper's σ_z²). learn_variance: λ is a Parameter (else a buffer, the
            paper's fixed σ_z²); learned variances add their normaliser γ·(D/2)·Σ_k q̄_k λ_k to ``loss``.
        learnable_prior: learn prior logits ρ (else uniform π).
        beta, gamma: weights of the KL term and of the latent term in ``loss`` (defaults 0.01 and
            0.00125: for a per-pixel-mean reconstruction loss; the paper's ALBO, with reconstruction in
            nats per latent vector, is gamma=1 with beta=1, or up to 8 for "+ Entropy"; see ``forward``).
        objective: "albo" (KL of the aggregated posterior, GM-VQ) or "elbo" (per-sample KL, the baseline).
        noise_injection: training output z + s·ε with s² the mixture variance.
        channel_first: D on axis 1 (e.g. (B, D, T) or (B, D, H, W)); default False: D on the last axis
            ((..., D), as vector-quantize-pytorch's default). accept_image_fmap: (B, D, H, W) image feature
            maps (vector-quantize-pytorch's name; implies channel_first and 4-D input); accept_3d_fmap:
            likewise (B, D, T, H, W) volumes or videos (5-D input). The layout is
            never guessed from the shape.
        return_loss_breakdown: return (quantized, codes, loss, terms) instead of the three
            (also a forward argument). return_zeros_for_masked_padding: what ``quantized`` holds at the
            positions a forward ``mask`` leaves out: zeros (default, as vector-quantize-pytorch), else the
            input itself. vector-quantize-pytorch arguments without a counterpart (decay,
            commitment_weight, ...) raise a TypeError saying what to use instead.
        kmeans_init: initialise the means by k-means on the first training batch (for latents that
            already mean something: from an untrained encoder it collapsed GM-VQ in the quality study).
        seed: training step t draws its Gumbel noise with seed + t (eager and compiled alike; rank r of
            a synced process group adds r·2⁴⁰); also seeds the k-means++ sampling. None: drawn from
            torch's global RNG at construction. The next step's seed is saved in ``state_dict``. A call
            that activation checkpointing runs again in the backward takes the seed it drew the first
            time (``_step_seed``).
        device_seed: keep that step counter in a buffer that moves with the module (``.to(device)``): on a
            CUDA device each training step then hands the kernels its seed in device memory and advances
            the counter there, so a training step captured in a CUDA graph draws new noise at every replay
            (README, "CUDA graphs"). Default False: the counter stays a CPU tensor, and a captured step
            replays the noise of its capture.
        impl, dot_precision: passed to ``gmvq``. sync_agg_posterior: all-reduce q̄ over the default
            process group; None = when torch.distributed is initialised with more than one rank.
        codebook_dim, heads: as vector-quantize-pytorch's (by default one codebook shared by the heads). Each
            latent vector is projected to heads·codebook_dim values (``project_in``, a Linear, when that
            differs from dim; codebook_dim defaults to dim) and split into ``heads`` vectors of
            codebook_dim, each quantized as a latent vector of its own (the loss and q̄ are over all of
            them); their quantized values are concatenated and projected back to dim (``project_out``).
            The codebook is (K, codebook_dim) and ``codes`` gain a last axis of ``heads`` when heads > 1.
        separate_codebook_per_head: each head its own codebook, as vector-quantize-pytorch's (at most 256
            heads): means (heads, K, codebook_dim), log-variances (heads, K) (or (heads, 1) shared per
            head) and prior logits (heads, K). Head h is a quantizer of its own on the h-th piece of every
            vector: its own q̄ (and KL), its own noise (seed + h·2⁵⁶), one op call per head; ``loss`` and
            the ``terms`` are the means over the heads.
    In eval mode the output is deterministic: codes = argmax_k ℓ, quantized = their means.
    """

    def __init__(self, dim: int, codebook_size: int, *, tau: float = 1.0, hard: bool = False,
                 init_log_var: float = DEFAULT_INIT_LOG_VAR, per_component_variance: bool = True,
                 learn_variance: bool = True, learnable_prior: bool = False, beta: float = DEFAULT_BETA,
                 gamma: float = DEFAULT_GAMMA, objective: str = "albo", noise_injection: bool = False,
                 channel_first: bool = False, accept_image_fmap: bool = False, accept_3d_fmap: bool = False,
                 return_loss_breakdown: bool = False, return_zeros_for_masked_padding: bool = True,
                 kmeans_init: bool = False, kmeans_iters: int = 10, impl: str = "auto",
                 dot_precision: Optional[str] = None, sync_agg_posterior: Optional[bool] = None,
                 seed: Optional[int] = None, device_seed: bool = False, codebook_dim: Optional[int] = None,
                 heads: int = 1, separate_codebook_per_head: bool = False, **vq_kwargs):
        super().__init__()
        _refuse(vq_kwargs, VQ_ARGUMENTS, "GaussianMixtureVQ")
        check_int("dim", dim)
        check_int("codebook_size", codebook_size)
        check_int("heads", heads)
        if codebook_dim is not None:
            check_int("codebook_dim", codebook_dim)
        check_flag("separate_codebook_per_head", separate_codebook_per_head)
        if separate_codebook_per_head and heads > MAX_SEPARATE_HEADS:
            raise ValueError(f"heads must be <= {MAX_SEPARATE_HEADS} with separate_codebook_per_head=True (each "
                             f"head draws its noise from its own seed range); got {heads}")
        check_tau(tau)
        for name, flag in (("hard", hard), ("per_component_variance", per_component_variance),
                           ("learn_variance", learn_variance), ("learnable_prior", learnable_prior),
                           ("noise_injection", noise_injection), ("kmeans_init", kmeans_init),
                           ("device_seed", device_seed)):
            check_flag(name, flag)
        check_number("init_log_var", init_log_var, -LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        check_number("beta", beta, lo=0.0)
        check_number("gamma", gamma, lo=0.0)
        check_int("kmeans_iters", kmeans_iters, lo=0)
        for name, flag in (("channel_first", channel_first), ("accept_image_fmap", accept_image_fmap),
                           ("accept_3d_fmap", accept_3d_fmap),
                           ("return_loss_breakdown", return_loss_breakdown),
                           ("return_zeros_for_masked_padding", return_zeros_for_masked_padding)):
            check_flag(name, flag)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
        if dot_precision is not None and dot_precision not in config.DOT_PRECISIONS:
            raise ValueError(f"dot_precision must be None or one of {config.DOT_PRECISIONS}; got {dot_precision!r}")
        # the step counter adds t (and r·2⁴⁰ per rank) to the seed in an int64: 2⁶² leaves room for both
        if seed is not None:
            _check_seed(seed)
        if objective not in ("albo", "elbo"):
            raise ValueError(f"objective must be 'albo' or 'elbo'; got {objective!r}")
        self.dim, self.codebook_size, self.objective = dim, codebook_size, objective
        self.tau, self.hard, self.beta, self.gamma = float(tau), hard, float(beta), float(gamma)
        self.noise_injection = noise_injection
        if accept_image_fmap and accept_3d_fmap:
            raise ValueError("pass accept_image_fmap=True or accept_3d_fmap=True, not both")
        self.channel_first = channel_first or accept_image_fmap or accept_3d_fmap
        self.accept_image_fmap, self.accept_3d_fmap = accept_image_fmap, accept_3d_fmap
        self.return_loss_breakdown = return_loss_breakdown
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.impl, self.dot_precision, self.sync_agg_posterior = impl, dot_precision, sync_agg_posterior
        self.kmeans_iters = kmeans_iters
        # heads and projections as vector-quantize-pytorch's VectorQuantize (its names and shapes)
        self.heads, self.codebook_dim = heads, codebook_dim or dim
        self.separate_codebook_per_head = separate_codebook_per_head
        books = (heads,) if separate_codebook_per_head else ()  # the codebook tensors' leading axis
        width = self.codebook_dim * heads
        self.has_projections = width != dim
        self.project_in = nn.Linear(dim, width) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(width, dim) if self.has_projections else nn.Identity()
        # created empty and filled by _reset_state (reset_parameters), as torch's layers do: a module built
        # under torch.device("meta") and materialised with to_empty() is initialised by reset_parameters()
        self.means = nn.Parameter(torch.empty(*books, codebook_size, self.codebook_dim))
        lv = torch.empty(*books, codebook_size if per_component_variance else 1)
        if learn_variance:
            self._log_var = nn.Parameter(lv)
        else:
            self.register_buffer("_log_var", lv)
        self.log_prior = nn.Parameter(torch.empty(*books, codebook_size)) if learnable_prior else None
        self.register_buffer("initted", torch.empty((), dtype=torch.bool))
        self._init_log_var, self._kmeans_requested = float(init_log_var), kmeans_init
        self._reset_state()
        self.register_load_state_dict_post_hook(_sync_kmeans_pending)
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None  # k-means++ only
        # Training step t draws its Gumbel noise with seed base + t. A tensor, which torch.compile takes as
        # a graph input (a Python int attribute would recompile every step). By default a CPU tensor, not a
        # buffer: it stays on the CPU when the module moves, and the launches take its value as scalars.
        # device_seed: a buffer (not in state_dict: get_extra_state saves it), on the module's device,
        # which the kernels read as they run (noise.seed_on_device): no host sync either way.
        # (drawn and held on the CPU whatever the default device: torch.device("cuda") or ("meta") as a context)
        self._seed_base = seed if seed is not None else int(torch.randint(0, 2**62, (), device="cpu"))
        if device_seed:
            self.register_buffer("_next_seed", torch.tensor(self._seed_base, dtype=torch.int64), persistent=False)
        else:
            self._next_seed = torch.tensor(self._seed_base, dtype=torch.int64, device="cpu")
        # the seeds of the calls that activation checkpointing may run again in the backward (_step_seed),
        # oldest first, and (graph task id, calls it has recomputed so far)
        self._recompute_seeds = collections.deque(maxlen=RECOMPUTE_SEEDS_KEPT)
        self._recompute_task = (-1, 0)

    @torch.no_grad()
    def _reset_state(self):
        """The codebook's initial values: means ~ N(0, 1/codebook_dim) (the same draws as torch.randn),
        log-variances init_log_var, a uniform prior, k-means pending where it was asked for."""
        self.means.normal_().div_(math.sqrt(self.codebook_dim))
        self._log_var.fill_(self._init_log_var)
        if self.log_prior is not None:
            self.log_prior.zero_()
        self.initted.fill_(not self._kmeans_requested)
        # Python mirror of ``initted`` (kept in sync on load_state_dict): torch.compile can branch on it
        # without reading a tensor
        self._kmeans_pending = self._kmeans_requested

    def reset_parameters(self) -> None:
        """Initialise the module as its constructor does, with new draws from torch's generator: the
        codebook, the variances, the prior, the k-means flag, ``project_in`` / ``project_out``, and the
        step counter back to its first seed. For a module built without memory (``with
        torch.device("meta"):``, then ``to_empty(device=...)``, whose values are garbage until set)."""
        for proj in (self.project_in, self.project_out):
            if isinstance(proj, nn.Linear):
                proj.reset_parameters()
        self._reset_state()
        self._next_seed.fill_(self._seed_base)
        self._recompute_seeds.clear()
        self._recompute_task = (-1, 0)

    @property
    def log_var(self) -> torch.Tensor:
        """Per-code log-variance (K,) ((heads, K) with separate codebooks), the shared value expanded when
        variances are tied. Clamped to the supported range |λ| ≤ 30: a learned λ that walks past it stops
        there instead of failing the op's range check in the middle of training."""
        lv = self._log_var.clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        return lv.expand(*lv.shape[:-1], self.codebook_size)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, "
                + (f"codebook_dim={self.codebook_dim}, heads={self.heads}, " if self.has_projections or self.heads > 1
                   else "")
                + ("separate_codebook_per_head=True, " if self.separate_codebook_per_head else "")
                + f"tau={self.tau}, hard={self.hard}, "
                f"beta={self.beta}, gamma={self.gamma}, objective={self.objective!r}, "
                f"shared_variance={self._log_var.shape[-1] == 1}, "
                f"learnable_prior={self.log_prior is not None}, impl={self.impl!r}"
                + (", device_seed=True" if "_next_seed" in self._buffers else ""))

    # --- layout
    @property
    def codebook(self) -> torch.Tensor:
        """The codebook (K, D), or (heads, K, D) with separate codebooks: the component means
        (vector-quantize-pytorch's name)."""
        return self.means

    def _layout_error(self, x, want):
        hint = ""
        if not self.channel_first and x.dim() >= 3 and x.shape[1] == self.dim:
            hint = "; for D on axis 1 pass accept_image_fmap=True (B, D, H, W) or channel_first=True"
        elif self.channel_first and x.shape[-1] == self.dim:
            hint = "; for D on the last axis drop accept_image_fmap / channel_first"
        return ValueError(f"x must have {want}; got shape {tuple(x.shape)}{hint}")

    def _flatten(self, x):
        """(N, D) rows of x and the shape of its non-channel axes (the layout is the module's, never a
        guess from the shape)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype (latents, not codes); got {x.dtype}")
        if self.accept_image_fmap and x.dim() != 4:
            raise ValueError(f"x must be (B, D, H, W) with accept_image_fmap=True; got shape {tuple(x.shape)}")
        if self.accept_3d_fmap and x.dim() != 5:
            raise ValueError(f"x must be (B, D, T, H, W) with accept_3d_fmap=True; got shape {tuple(x.shape)}")
        if self.channel_first:
            if x.dim() < 2 or x.shape[1] != self.dim:
                raise self._layout_error(x, f"D == {self.dim} channels on axis 1 (channel-first)")
            x = x.movedim(1, -1)
        elif x.dim() < 1 or x.shape[-1] != self.dim:
            raise self._layout_error(x, f"D == {self.dim} on its last axis (channel-last)")
        return x.reshape(-1, self.dim), x.shape[:-1]

    @staticmethod
    def _row_mask(x, lead, mask, lens):
        """The (N,) bool mask of the rows to quantize, from ``mask`` (lead-shaped bool) or ``lens`` ((B,)
        integer lengths of (B, T) sequences: position t of sequence b is kept when t < lens[b]), or None."""
        if mask is not None and lens is not None:
            raise ValueError("pass mask or lens, not both")
        if lens is not None:
            if not isinstance(lens, torch.Tensor) or lens.is_floating_point() or lens.is_complex() \
                    or lens.dtype == torch.bool:
                raise TypeError(f"lens must be an integer tensor; got {describe(lens)}")
            if len(lead) != 2 or tuple(lens.shape) != (lead[0],):
                raise ValueError(f"lens must have shape (B,) for latents of B sequences of T vectors ((B, T) "
                                 f"without the channel axis: {tuple(lead)}); got shape {tuple(lens.shape)}")
            if lens.device != x.device:
                raise ValueError(f"lens must be on the device of x ({x.device}); got {lens.device}")
            mask = torch.arange(lead[1], device=x.device) < lens[:, None]
        elif mask is None:
            return None
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor; got {describe(mask)}")
        elif tuple(mask.shape) != tuple(lead):
            raise ValueError(f"mask must have the shape of x without its channel axis, {tuple(lead)}; got "
                             f"{tuple(mask.shape)}")
        elif mask.device != x.device:
            raise ValueError(f"mask must be on the device of x ({x.device}); got {mask.device}")
        return mask.reshape(-1)

    def _unflatten(self, flat, lead_shape):
        out = flat.reshape(*lead_shape, self.dim)
        return out.movedim(-1, 1) if self.channel_first else out

    def _to_rows(self, flat):
        """(N, dim) latent vectors -> (N·heads, codebook_dim) rows the quantizer sees (project_in, split)."""
        return self.project_in(flat.to(self.means.dtype)).reshape(-1, self.codebook_dim)

    def _from_rows(self, z):
        """(N·heads, codebook_dim) quantized rows -> (N, dim) (concatenated over the heads, project_out)."""
        return self.project_out(z.reshape(-1, self.heads * self.codebook_dim))

    def _code_shape(self, lead):
        return (*lead, self.heads) if self.heads > 1 else tuple(lead)

    def _per_book(self, t):
        """A codebook tensor (means, log-variances, prior logits, or None) per op call: itself with the shared
        codebook, else each head's."""
        if not self.separate_codebook_per_head:
            return [t]
        return [None] * self.heads if t is None else list(t.unbind(0))

    def _books(self, rows):
        """The op's calls on the rows (N·heads, codebook_dim), as (rows, means, log_var, log_prior): one on
        all of them with the shared codebook, or one per head on its rows (N, codebook_dim) with its own."""
        parts = rows.reshape(-1, self.heads, self.codebook_dim).unbind(1) if self.separate_codebook_per_head else [rows]
        return list(zip(parts, self._per_book(self.means), self._per_book(self.log_var),
                        self._per_book(self.log_prior)))

    @staticmethod
    def _per_head(values):
        """One codebook's value as it is; with separate codebooks the mean over the heads."""
        return values[0] if len(values) == 1 else torch.stack(values).mean(0)

    @staticmethod
    def _join(parts):
        """The calls' results (per head: (N, ...)) in the rows' order (N·heads, ...), each vector's heads adjacent."""
        return parts[0] if len(parts) == 1 else torch.stack(parts, 1).flatten(0, 1)

    @staticmethod
    def _head_seed(seed, h):
        """Head h's seed with separate codebooks: seed + h·2⁵⁶ (mod 2⁶⁴, as the op takes seeds)."""
        if h == 0:
            return seed
        if isinstance(seed, torch.Tensor):
            return seed + as_int64(h << HEAD_SEED_SHIFT)
        return (seed + (h << HEAD_SEED_SHIFT)) % 2**64

    def _check_heads_axis(self, codes):
        if self.heads > 1 and (codes.dim() < 1 or codes.shape[-1] != self.heads):
            raise ValueError(f"codes must have a last axis of heads == {self.heads}; got shape {tuple(codes.shape)}")

    # --- tokenizer use
    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, mask: Optional[torch.Tensor] = None,
               lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic codes argmax_k ℓ, shaped like x without its channel axis: one fused pass that
        computes only the codes (``gmvq_encode``), in train or eval mode alike. ``mask`` / ``lens`` as
        for ``forward``: only the kept vectors are encoded, −1 elsewhere."""
        flat, lead = self._flatten(x)
        keep = self._row_mask(x, lead, mask, lens)
        kept = flat if keep is None else flat[keep]
        if kept.shape[0] == 0:  # all padding
            return torch.full(self._code_shape(lead), -1, dtype=torch.int64, device=x.device)
        codes = self._join([gmvq_encode(*book, impl=self.impl, dot_precision=self.dot_precision)
                            for book in self._books(self._to_rows(kept))]).reshape(kept.shape[0], self.heads)
        return (codes if keep is None else _padded_codes(keep, codes)).reshape(self._code_shape(lead))

    def _means_of(self, codes):
        """The means of ``codes`` (lead shape, + (heads,) when heads > 1) concatenated over the heads:
        lead + (heads·codebook_dim,)."""
        if self.separate_codebook_per_head and self.heads > 1:  # each head's codes in its own codebook
            check_codes(codes)
            self._check_heads_axis(codes)
            z = torch.stack([gmvq_decode(c, means) for c, means in zip(codes.unbind(-1), self.means)], -2)
        else:
            z = gmvq_decode(codes, self.means.reshape(-1, self.codebook_dim))  # checks codes' type and range
            self._check_heads_axis(codes)
        return z.reshape(*z.shape[:-2], self.heads * self.codebook_dim) if self.heads > 1 else z

    def _channel_layout(self, z):
        return z.movedim(-1, 1) if self.channel_first and z.dim() > 2 else z

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """What ``forward`` returns in eval mode for these codes, in the module's layout: their means
        (concatenated over the heads and through ``project_out`` where the module has them), shape
        codes.shape + (D,) (without the heads axis when heads > 1), or with D on axis 1 when
        channel-first ((B, ...) → (B, D, ...)). Code −1 (a non-finite latent, see the NaN policy, or
        padding) gives NaN, never a real code."""
        return self._channel_layout(self.project_out(self._means_of(codes)))

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """The codebook vectors of ``indices`` by vector-quantize-pytorch's name: their means, concatenated
        over the heads, before ``project_out``, in the module's layout (D on axis 1 for image feature maps
        and channel-first input, as vector-quantize-pytorch's)."""
        return self._channel_layout(self._means_of(indices))

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``decode`` by vector-quantize-pytorch's name: the codebook vectors through ``project_out``."""
        return self.decode(indices)

    # --- k-means initialisation
    @torch.no_grad()
    def _kmeans_init(self, rows):
        """k-means++ seeding then Lloyd iterations on the first training batch's rows (N·heads,
        codebook_dim), each codebook on the rows it quantizes (``_books``). Under data parallel (the
        process group q̄ is synced over) every rank then takes rank 0's fit: each rank's own would leave
        the replicas' codebooks different for good (DDP broadcasts parameters once, at its construction)."""
        for flat, means, _, _ in self._books(rows.detach().to(self.means.dtype)):
            means.copy_(self._kmeans_fit(flat))
        group = self._process_group()
        if group is not None:
            import torch.distributed as dist
            dist.broadcast(self.means, src=dist.get_global_rank(group, 0), group=group)
        self.initted.fill_(True)
        self._kmeans_pending = False

    def _kmeans_fit(self, flat):
        """K centroids of the rows ``flat`` (rows chunked, so the distance matrix is at most 4096 × K at a time)."""
        K = self.codebook_size
        first = torch.randint(0, flat.shape[0], (1,), generator=self._generator).item()
        c = flat[first:first + 1].clone()
        d2 = ((flat - c) ** 2).sum(1)
        for _ in range(1, K):
            w = d2.float().cpu() + 1e-12  # all-zero distances (duplicate rows) fall back to uniform
            nxt = flat[torch.multinomial(w, 1, generator=self._generator).item()][None]
            c = torch.cat([c, nxt])
            d2 = torch.minimum(d2, ((flat - nxt) ** 2).sum(1))
        for _ in range(self.kmeans_iters):
            assign = torch.cat([torch.cdist(chunk, c).argmin(1) for chunk in flat.split(4096)])
            sums = torch.zeros_like(c).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=K).to(flat.dtype)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        return c

    def _step_seed(self, rows: torch.Tensor) -> torch.Tensor:
        """The seed of this training call: seed + t of a new step (the counter advances), or, where
        activation checkpointing runs a call again during the backward (torch.utils.checkpoint, either
        mode), the seed that call drew. torch restores its own RNG for a recomputation, not this counter: a new seed
        there would pair the backward with noise the forward never drew (wrong gradients) and advance the
        counter twice a step. Which call a recomputation repeats is not visible to it, so calls that may
        be recomputed keep their seeds in order and each backward pass takes them latest first, the order
        in which it reaches checkpointed regions: right for any number of checkpointed calls per step, for
        gradient accumulation and for repeated backward passes (retain_graph), but not for a backward that
        recomputes only an earlier call while a later one waits (README, "Activation checkpointing")."""
        task = _backward_task()
        if task != -1:
            last_task, done = self._recompute_task
            done = done if task == last_task else 0
            if done >= len(self._recompute_seeds):
                raise RuntimeError(
                    "GaussianMixtureVQ: a training call ran during a backward pass (activation checkpointing "
                    f"recomputing it?) but the module has {len(self._recompute_seeds)} seed(s) of calls that "
                    f"checkpointing may recompute and this backward has already taken {done}, so it cannot draw "
                    f"the noise of the call it repeats. Kept are the last {RECOMPUTE_SEEDS_KEPT} training calls "
                    "made with grad disabled or under a saved-tensor hook, as torch.utils.checkpoint's two modes "
                    "make them (README, \"Activation checkpointing\").")
            self._recompute_task = (task, done + 1)
            return self._recompute_seeds[-1 - done]
        seed = self._next_seed.clone()
        self._next_seed += 1
        if _may_be_recomputed(rows, self):
            self._recompute_seeds.append(seed)
        return seed

    def get_extra_state(self):
        # the step counter, in state_dict so that a resumed run continues the noise: as a 0-dim int64 CPU
        # tensor, since formats of tensors alone (safetensors, what Hugging Face saves) refuse anything else
        return self._next_seed.detach().to("cpu", torch.int64, copy=True)

    def set_extra_state(self, state):
        # the counter as get_extra_state saves it, or as {"next_seed": int}, how it was saved until 2026-12-05
        if isinstance(state, torch.Tensor):
            seed = int(state) if state.dim() == 0 and state.dtype in _INT_DTYPES else state
        else:
            seed = state.get("next_seed") if isinstance(state, dict) else state
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise ValueError("extra_state (the step counter) must be a 0-dim integer tensor or next_seed an integer, "
                             f"in [0, 2**63); got {seed!r}")
        if self._next_seed.is_meta:  # device_seed's buffer, in a module built on meta and loaded with assign=True
            self._next_seed = torch.empty((), dtype=torch.int64, device=self.means.device)
        self._next_seed.fill_(int(seed))
        self._recompute_seeds.clear()

    def init_codebook(self, x: torch.Tensor) -> None:
        """Run the k-means initialisation on ``x`` now (layout as for ``forward``), e.g. before
        ``torch.compile(fullgraph=True)``, which cannot trace it. Under data parallel it is a collective
        (every rank takes rank 0's fit): call it on every rank."""
        flat = self._flatten(x)[0]
        if flat.shape[0] == 0:
            raise ValueError(f"init_codebook needs at least one latent vector; x has shape {tuple(x.shape)}")
        with torch.no_grad():
            _MODULE.kmeans_init_eager(self, self._to_rows(flat))

    def _process_group(self):
        import torch.distributed as dist

        sync = self.sync_agg_posterior
        if sync is None:
            sync = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return dist.group.WORLD if sync else None

    def forward(self, x: torch.Tensor, return_loss_breakdown: Optional[bool] = None, *,
                mask: Optional[torch.Tensor] = None, lens: Optional[torch.Tensor] = None, seed=None,
                **vq_kwargs):
        """Quantize ``x`` (layout as configured: (..., D) by default). Returns
        ``QuantizerOutput(quantized, codes, loss)``, or with ``return_loss_breakdown`` (here or in the
        constructor) ``QuantizerOutputWithTerms(quantized, codes, loss, terms)``.

        - Training: ``quantized`` is the Gumbel-softmax sample Σ_k y_k μ_k (``hard=True``: the mean of
          argmax_k(ℓ_k + g_k), straight-through), plus s·ε with ``noise_injection``. ``codes`` are the
          codes used: with ``hard=True`` the sampled argmax_k(ℓ_k + g_k), whose mean ``quantized`` holds
          (as VectorQuantize's indices); soft samples mix all means, and ``codes`` are then argmax_k ℓ_k.
          The noise-free codes a tokenizer emits come from ``encode`` (or eval mode). With heads > 1
          ``codes`` have a last axis of ``heads``.
        - Eval: deterministic; ``codes`` = argmax_k ℓ_k, ``quantized`` = their means, ``loss`` = 0 (as
          VectorQuantize); ``terms`` still hold the values. On the kernels the codes are ``encode``'s
          (its one pass), and the training op runs only for ``terms``.
        - ``loss`` = γ·(mean latent_nll + (D/2)·Σ_k q̄_k λ_k if the variances are learned) + β·KL(q̄ ‖ π)
          (``objective="elbo"``: the per-sample KL), in nats per latent vector. Add it to your
          reconstruction loss as it is: the defaults γ = 0.00125, β = 0.01 are set for a per-pixel-mean
          reconstruction loss (``(decoder(quantized) - x).square().mean()``). With the reconstruction in
          nats per latent vector (Σ over the V values a latent vector covers of (x − x̂)²/(2σ_x²)), use the
          paper's scale: γ = 1, β = 1 to 8 (the defaults are γ = 1, β = 8 divided by V/(2σ_x²) = 800).
          Raise β for more codes in use; the latent term can go negative with learned
          variances (−log density). ``terms``: latent_nll, kl, perplexity (of q̄), log_likelihood, mixture_var,
          entropy — batch means, detached.
        - ``mask`` (bool, x's shape without the channel axis) or ``lens`` ((B,) lengths of (B, T)
          sequences; padding at the end), as vector-quantize-pytorch: only the kept vectors are quantized,
          and the loss, q̄ and ``terms`` are theirs alone. Elsewhere ``codes`` is −1 and ``quantized`` 0
          (the input itself with ``return_zeros_for_masked_padding=False``). The kept rows are gathered
          first, so their number is data-dependent: one device sync on a GPU, and a graph break under
          torch.compile. A training call must keep at least one vector; in eval mode none kept (or an
          empty x) gives the padding's values, codes −1, loss 0 and NaN terms (means over no vectors).
        - ``seed`` (training): this call's noise seed, an int in [0, 2**62) or a 0-dim int64 tensor, instead
          of the step counter's (which then does not advance; rank r of a synced group adds r·2⁴⁰ as to
          the counter's): for schedules the counter cannot follow, such as checkpointed micro-batches
          of a pipeline (README, "Activation checkpointing"). Ignored in eval mode, which draws no noise.
        - vector-quantize-pytorch's other forward arguments (``freeze_codebook``, ``indices``, ...) raise a
          TypeError saying what to do instead."""
        _refuse(vq_kwargs, VQ_FORWARD_ARGUMENTS, "GaussianMixtureVQ.forward")
        if seed is not None and not isinstance(seed, torch.Tensor):
            _check_seed(seed, " or a 0-dim int64 tensor")
        flat, lead = self._flatten(x)
        keep = self._row_mask(x, lead, mask, lens)
        kept = flat if keep is None else flat[keep]
        breakdown = self.return_loss_breakdown if return_loss_breakdown is None else return_loss_breakdown
        if kept.shape[0] == 0:
            if self.training:  # q̄ is a mean over the vectors: none has no q̄ (VectorQuantize's loss is NaN)
                raise ValueError("a training call must quantize at least one latent vector; "
                                 + (f"x has shape {tuple(x.shape)}" if keep is None else "mask (or lens) keeps none"))
            return self._nothing_kept(flat, lead, breakdown)
        rows = self._to_rows(kept)  # each kept vector's heads, through project_in
        if not self.training:
            return self._eval_outputs(x, flat, lead, keep, rows, breakdown)
        if self._kmeans_pending:
            _MODULE.kmeans_init_eager(self, rows)
        group = self._process_group()
        if seed is None:
            seed = self._step_seed(rows)
        if group is not None:  # data parallel: each rank's rows get their own noise stream
            seed = seed + (group.rank() << RANK_SEED_SHIFT)
        outs, zs, codes = [], [], []
        for h, book in enumerate(self._books(rows)):
            out, sample = gmvq_with_sample(*book, tau=self.tau, hard=self.hard, seed=self._head_seed(seed, h),
                                           impl=self.impl, process_group=group, dot_precision=self.dot_precision)
            z = out.quantized
            if self.noise_injection:
                z = z + out.mixture_var.clamp_min(0).sqrt().to(z.dtype)[:, None] * torch.randn_like(z)
            outs.append(out)
            zs.append(z)
            # the codes it used, as VectorQuantize: a hard sample's code, else argmax_k ℓ
            codes.append(out.codes if sample is None else sample)
        loss = self._loss(outs)
        quantized, codes = self._place(x, flat, lead, keep, self._join(zs), self._join(codes))
        if not breakdown:
            return QuantizerOutput(quantized, codes, loss)
        return QuantizerOutputWithTerms(quantized, codes, loss, self._terms(outs, loss))

    def _eval_outputs(self, x, flat, lead, keep, rows, breakdown):
        """Eval mode: codes = argmax_k ℓ and their means, loss 0. Where the op runs the kernels the codes
        are the tokenizer's (``gmvq_encode``: one pass that computes nothing else, no noise, softmaxes or
        q̄: 1.9–5.0× less time than the training forward at rows 2–4 on an H200, 2026-12-04), and the
        full op runs only for the breakdown's terms (seed 0: latent_nll and mixture_var are the soft
        sample's). With impl "torch" or the reference the op's forward gives both: its C pass finds the
        codes faster than the chunked reference does at K ≥ 1024 on a CPU (README, "Replacing a VQ layer")."""
        books = self._books(rows)

        def full_ops():
            return [gmvq_with_sample(*book, tau=self.tau, hard=self.hard, seed=0, impl=self.impl,
                                     dot_precision=self.dot_precision)[0] for book in books]

        outs = None
        if resolve_impl(self.impl, to_autocast(rows)) == "triton":
            codes = [gmvq_encode(*book, impl=self.impl, dot_precision=self.dot_precision) for book in books]
        else:
            outs = full_ops()
            codes = [out.codes for out in outs]
        z = self._join([gmvq_decode(c, means) for c, (_, means, _, _) in zip(codes, books)])
        quantized, codes = self._place(x, flat, lead, keep, z, self._join(codes))
        zero = self._zero_loss(x.device)
        if not breakdown:
            return QuantizerOutput(quantized, codes, zero)
        outs = full_ops() if outs is None else outs
        return QuantizerOutputWithTerms(quantized, codes, zero, self._terms(outs, self._loss(outs)))

    def _loss(self, outs):
        """The objective of the op calls' outputs (``_books``' order), averaged over separate codebooks."""
        objective = albo_loss if self.objective == "albo" else elbo_loss
        # learned variances pay their normaliser (losses.variance_normaliser); a fixed σ_z² need not
        log_var = self.log_var if self._log_var.requires_grad else None
        return self._per_head([objective(out, prior, beta=self.beta, gamma=self.gamma, log_var=lv) for out, prior, lv
                               in zip(outs, self._per_book(self.log_prior), self._per_book(log_var))])

    def _terms(self, outs, loss):
        """The breakdown's terms (TERM_NAMES): batch means (and means over separate codebooks), detached."""
        values = [(out.latent_nll.mean(), kl_to_prior(out.agg_posterior, prior), perplexity(out.agg_posterior),
                   out.log_likelihood.mean(), out.mixture_var.mean(), out.entropy.mean())
                  for out, prior in zip(outs, self._per_book(self.log_prior))]
        values = [*map(self._per_head, zip(*values)), loss]
        return {name: value.detach() for name, value in zip(TERM_NAMES, values)}

    def _place(self, x, flat, lead, keep, z, codes):
        """(quantized, codes) in the input's layout from the kept rows' quantized rows z (N·heads, codebook_dim)
        and codes (N·heads,): through project_out, the padding filled (0, or the input itself) and −1."""
        z = self._from_rows(z)
        codes = codes.reshape(-1, self.heads)
        if keep is not None:  # the kept rows back in place, as their codes
            fill = torch.zeros_like(flat, dtype=z.dtype) if self.return_zeros_for_masked_padding else flat.to(z.dtype)
            z = fill.masked_scatter(keep[:, None], z)
            codes = _padded_codes(keep, codes)
        return self._unflatten(z.to(x.dtype), lead), codes.reshape(self._code_shape(lead))

    def _zero_loss(self, device):
        """Eval mode's loss, as VectorQuantize's: 0, in the dtype of the training loss."""
        return torch.zeros((), dtype=torch.promote_types(self.means.dtype, torch.float32), device=device)

    def _nothing_kept(self, flat, lead, breakdown):
        """Eval mode's outputs when no vector is quantized (an empty x, or a mask that keeps none), as
        VectorQuantize's: every position padding (0, or the input with return_zeros_for_masked_padding=False)."""
        quantized = self._unflatten(torch.zeros_like(flat) if self.return_zeros_for_masked_padding else flat, lead)
        codes = torch.full(self._code_shape(lead), -1, dtype=torch.int64, device=flat.device)
        loss = self._zero_loss(flat.device)
        if not breakdown:
            return QuantizerOutput(quantized, codes, loss)
        terms = {name: torch.full_like(loss, float("nan")) for name in TERM_NAMES}
        return QuantizerOutputWithTerms(quantized, codes, loss, terms)


def _kmeans_init_eager(vq, flat):
    """``vq._kmeans_init(flat)``; as ``kmeans_init_eager`` (below) run eagerly even inside a compiled
    forward (torch.compiler.disable): it is data-dependent (host loops, .item())."""
    vq._kmeans_init(flat)


__getattr__ = compiler_marks(__name__, kmeans_init_eager=("disable", _kmeans_init_eager))
_MODULE = sys.modules[__name__]  # the module object, whose attribute lookup reaches __getattr__
