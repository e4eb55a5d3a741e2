"""glam: GLaM (Du et al., ICML 2022), a sparse Mixture-of-Experts language model family in JAX."""

__version__ = "0.1.0"
