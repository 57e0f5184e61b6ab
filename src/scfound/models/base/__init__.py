"""What several models share: safe save/load, group-wise training and inference, MuData setup."""

from ._save import SafeSaveMixin, check_genes, read_model_meta, write_model

__all__ = ["SafeSaveMixin", "check_genes", "read_model_meta", "write_model"]
