"""gemel: generative multimodal entity linking (GEMEL, Shi et al. 2023) as reproducible stages."""
__version__ = "0.1.0"
