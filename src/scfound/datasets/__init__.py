"""Datasets: small real spatial datasets shipped with the package and synthetic generators."""

from ._atac_sim import pseudobulk_profiles, simulate_atac
from ._multimodal import synthetic_multiome
from ._real import cosmx_lung12_mini, osmfish, osmfish_halves
from ._synthetic import synthetic_spatial

__all__ = [
    "cosmx_lung12_mini",
    "osmfish",
    "osmfish_halves",
    "pseudobulk_profiles",
    "simulate_atac",
    "synthetic_multiome",
    "synthetic_spatial",
]
