"""gmvq_kernels: fused Triton kernels for Gaussian Mixture Vector Quantization (GM-VQ)."""
from .functional import gmvq, gmvq_decode, gmvq_encode
from .losses import albo_loss, elbo_loss, kl_to_prior, perplexity, codebook_usage, tau_schedule
from .modules import GaussianMixtureVQ, QuantizerOutput, QuantizerOutputWithTerms
from .noise import gumbel_noise
from .reference import gmvq_reference
from .spec import GMVQOutput

__version__ = "0.1.0"

__all__ = ["gmvq", "gmvq_encode", "gmvq_decode", "gumbel_noise", "gmvq_reference", "GMVQOutput", "GaussianMixtureVQ", "QuantizerOutput", "QuantizerOutputWithTerms",
           "albo_loss", "elbo_loss", "kl_to_prior", "perplexity", "codebook_usage", "tau_schedule"]
