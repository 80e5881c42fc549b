"""``GaussianMixtureVQ``: the GM-VQ quantizer as an nn.Module, a drop-in for a VQ layer."""
import math
import numbers
from typing import NamedTuple, Optional

import torch
from torch import nn

from . import config
from .checks import IMPLS, LOG_VAR_LIMIT, check_flag, check_int, check_number, check_tau
from .functional import gmvq
from .losses import albo_loss, elbo_loss, kl_to_prior, perplexity


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # same layout and dtype as the input
    codes: torch.Tensor      # input shape without the channel axis, int64
    loss: torch.Tensor       # albo_loss / elbo_loss of the op's outputs (with log_var when σ² is learned)
    terms: dict              # latent_nll, kl, perplexity, log_likelihood, mixture_var, entropy (detached)


RANK_SEED_SHIFT = 40  # rank r of a synced group draws with seed + t + r·2⁴⁰: streams never meet


def _sync_kmeans_pending(module, _incompatible_keys):
    module._kmeans_pending = not bool(module.initted)


class GaussianMixtureVQ(nn.Module):
    """GM-VQ quantizer owning the codebook means (K, D), log-variances and optionally prior logits.

    Args:
        dim: latent dimension D. codebook_size: number of codes K.
        tau: Gumbel-softmax temperature (set ``.tau`` each step to anneal, see ``tau_schedule``).
        hard: straight-through one-hot samples in training.
        init_log_var: initial log σ² of every component. per_component_variance: one λ per code
            (else one shared λ, the paper's σ_z²). learn_variance: λ is a Parameter (else a buffer, the
            paper's fixed σ_z²); learned variances add their normaliser γ·(D/2)·Σ_k q̄_k λ_k to ``loss``.
        learnable_prior: learn prior logits ρ (else uniform π).
        beta, gamma: weights of the KL term and of the latent term in ``loss``.
        objective: "albo" (KL of the aggregated posterior, GM-VQ) or "elbo" (per-sample KL, the baseline).
        noise_injection: training output z + s·ε with s² the mixture variance.
        channel_first: layout of the input. None: 4-D inputs are (B, D, H, W), others (..., D).
        kmeans_init: initialise the means by k-means on the first training batch (for latents that
            already mean something: from an untrained encoder it collapsed GM-VQ in the quality study).
        seed: training step t draws its Gumbel noise with seed + t (eager and compiled alike; rank r of
            a synced process group adds r·2⁴⁰); also seeds the k-means++ sampling. None: drawn from
            torch's global RNG at construction. The next step's seed is saved in ``state_dict``.
        impl, dot_precision: passed to ``gmvq``. sync_agg_posterior: all-reduce q̄ over the default
            process group; None = when torch.distributed is initialised with more than one rank.
    In eval mode the output is deterministic: codes = argmax_k ℓ, quantized = their means.
    """

    def __init__(self, dim: int, codebook_size: int, *, tau: float = 1.0, hard: bool = False,
                 init_log_var: float = 0.0, per_component_variance: bool = True,
                 learn_variance: bool = True, learnable_prior: bool = False, beta: float = 1.0,
                 gamma: float = 1.0, objective: str = "albo", noise_injection: bool = False,
                 channel_first: Optional[bool] = None,
                 kmeans_init: bool = False, kmeans_iters: int = 10, impl: str = "auto",
                 dot_precision: Optional[str] = None, sync_agg_posterior: Optional[bool] = None,
                 seed: Optional[int] = None):
        super().__init__()
        check_int("dim", dim)
        check_int("codebook_size", codebook_size)
        check_tau(tau)
        for name, flag in (("hard", hard), ("per_component_variance", per_component_variance),
                           ("learn_variance", learn_variance), ("learnable_prior", learnable_prior),
                           ("noise_injection", noise_injection), ("kmeans_init", kmeans_init)):
            check_flag(name, flag)
        check_number("init_log_var", init_log_var, -LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        check_number("beta", beta, lo=0.0)
        check_number("gamma", gamma, lo=0.0)
        check_int("kmeans_iters", kmeans_iters, lo=0)
        if channel_first is not None:
            check_flag("channel_first", channel_first)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
        if dot_precision is not None and dot_precision not in config.DOT_PRECISIONS:
            raise ValueError(f"dot_precision must be None or one of {config.DOT_PRECISIONS}; got {dot_precision!r}")
        # the step counter adds t (and r·2⁴⁰ per rank) to the seed in an int64: 2⁶² leaves room for both
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2**62):
            raise ValueError(f"seed must be None or an integer in [0, 2**62); got {seed!r}")
        if objective not in ("albo", "elbo"):
            raise ValueError(f"objective must be 'albo' or 'elbo'; got {objective!r}")
        self.dim, self.codebook_size, self.objective = dim, codebook_size, objective
        self.tau, self.hard, self.beta, self.gamma = float(tau), hard, float(beta), float(gamma)
        self.noise_injection, self.channel_first = noise_injection, channel_first
        self.impl, self.dot_precision, self.sync_agg_posterior = impl, dot_precision, sync_agg_posterior
        self.kmeans_iters = kmeans_iters
        self.means = nn.Parameter(torch.randn(codebook_size, dim) / math.sqrt(dim))
        lv = torch.full((codebook_size if per_component_variance else 1,), float(init_log_var))
        if learn_variance:
            self._log_var = nn.Parameter(lv)
        else:
            self.register_buffer("_log_var", lv)
        self.log_prior = nn.Parameter(torch.zeros(codebook_size)) if learnable_prior else None
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        # Python mirror of ``initted`` (kept in sync on load_state_dict): torch.compile can branch on it
        # without reading a tensor
        self._kmeans_pending = kmeans_init
        self.register_load_state_dict_post_hook(_sync_kmeans_pending)
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None  # k-means++ only
        # Training step t draws its Gumbel noise with seed base + t. A CPU tensor, not a buffer: it stays
        # on the CPU when the module moves (the launch reads it without a device sync), and torch.compile
        # takes it as a graph input (a Python int attribute would recompile every step).
        base = seed if seed is not None else int(torch.randint(0, 2**62, ()))
        self._next_seed = torch.tensor(base, dtype=torch.int64)

    @property
    def log_var(self) -> torch.Tensor:
        """Per-code log-variance (K,), the shared value expanded when variances are tied."""
        return self._log_var.expand(self.codebook_size)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, tau={self.tau}, hard={self.hard}, "
                f"beta={self.beta}, gamma={self.gamma}, objective={self.objective!r}, shared_variance={self._log_var.numel() == 1}, "
                f"learnable_prior={self.log_prior is not None}, impl={self.impl!r}")

    # --- layout
    def _is_channel_first(self, x):
        return x.dim() == 4 if self.channel_first is None else self.channel_first

    def _flatten(self, x):
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype (latents, not codes); got {x.dtype}")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor (..., D) or (B, D, H, W); got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if self._is_channel_first(x):
            if x.shape[1] != self.dim:
                raise ValueError(f"x must have D == {self.dim} channels on axis 1 (channel-first); "
                                 f"got shape {tuple(x.shape)}")
            x = x.movedim(1, -1)
        elif x.shape[-1] != self.dim:
            raise ValueError(f"x must have D == {self.dim} on its last axis (channel-last); "
                             f"got shape {tuple(x.shape)}")
        return x.reshape(-1, self.dim), x.shape[:-1]

    def _unflatten(self, flat, lead_shape, channel_first):
        out = flat.reshape(*lead_shape, self.dim)
        return out.movedim(-1, 1) if channel_first else out

    # --- tokenizer use
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic codes argmax_k ℓ, shaped like x without its channel axis."""
        flat, lead = self._flatten(x)
        out = gmvq(flat.to(self.means.dtype), self.means, self.log_var, self.log_prior,
                   tau=self.tau, impl=self.impl, dot_precision=self.dot_precision)
        return out.codes.reshape(lead)

    def decode(self, codes: torch.Tensor, channel_first: Optional[bool] = None) -> torch.Tensor:
        """Means of the codes: (..., D), or (B, D, H, W) when channel-first (by default: 3-D codes,
        unless the module's ``channel_first`` says otherwise)."""
        if channel_first is None:
            channel_first = self.channel_first if self.channel_first is not None else codes.dim() == 3
        # code −1 (a non-finite latent, see the NaN policy) decodes to NaN, never to a real code
        z = self.means[codes.clamp_min(0)].masked_fill((codes < 0)[..., None], float("nan"))
        return z.movedim(-1, 1) if channel_first else z

    # --- k-means initialisation
    @torch.compiler.disable  # data-dependent (host loops, .item()): eager even inside a compiled forward
    @torch.no_grad()
    def _kmeans_init(self, flat):
        """k-means++ seeding then Lloyd iterations on the first training batch (rows chunked, so the
        distance matrix is at most 4096 × K at a time)."""
        flat = flat.detach().to(self.means.dtype)
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
        self.means.copy_(c)
        self.initted.fill_(True)
        self._kmeans_pending = False

    def get_extra_state(self):
        return {"next_seed": int(self._next_seed)}  # in state_dict: a resumed run continues the noise

    def set_extra_state(self, state):
        seed = state.get("next_seed") if isinstance(state, dict) else None
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise ValueError(f"extra_state next_seed must be an integer in [0, 2**63); got {seed!r}")
        self._next_seed.fill_(int(seed))

    def init_codebook(self, x: torch.Tensor) -> None:
        """Run the k-means initialisation on ``x`` now (layout as for ``forward``), e.g. before
        ``torch.compile(fullgraph=True)``, which cannot trace it."""
        self._kmeans_init(self._flatten(x)[0])

    def _process_group(self):
        import torch.distributed as dist

        sync = self.sync_agg_posterior
        if sync is None:
            sync = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return dist.group.WORLD if sync else None

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        flat, lead = self._flatten(x)
        cf = self._is_channel_first(x)
        if self.training and self._kmeans_pending:
            self._kmeans_init(flat)
        seed, group = 0, None
        if self.training:
            group = self._process_group()
            seed = self._next_seed.clone()
            self._next_seed += 1
            if group is not None:  # data parallel: each rank's rows get their own noise stream
                seed = seed + (group.rank() << RANK_SEED_SHIFT)
        out = gmvq(flat.to(self.means.dtype), self.means, self.log_var, self.log_prior,
                   tau=self.tau, hard=self.hard, seed=seed, impl=self.impl, process_group=group,
                   dot_precision=self.dot_precision)
        if self.training:
            z = out.quantized
            if self.noise_injection:
                z = z + out.mixture_var.clamp_min(0).sqrt().to(z.dtype)[:, None] * torch.randn_like(z)
        else:
            z = self.means[out.codes]
        objective = albo_loss if self.objective == "albo" else elbo_loss
        # learned variances pay their normaliser (losses.variance_normaliser); a fixed σ_z² need not
        loss = objective(out, self.log_prior, beta=self.beta, gamma=self.gamma,
                         log_var=self.log_var if self._log_var.requires_grad else None)
        terms = dict(latent_nll=out.latent_nll.mean().detach(),
                     kl=kl_to_prior(out.agg_posterior, self.log_prior).detach(),
                     perplexity=perplexity(out.agg_posterior).detach(),
                     log_likelihood=out.log_likelihood.mean().detach(),
                     mixture_var=out.mixture_var.mean().detach(), entropy=out.entropy.mean().detach())
        return QuantizerOutput(self._unflatten(z.to(x.dtype), lead, cf), out.codes.reshape(lead), loss, terms)
