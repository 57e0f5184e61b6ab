"""What several models share: safe save/load, group-wise training and inference, MuData setup."""

from ._mudata import (
    MODALITY_KINDS,
    ModalityKind,
    MuDataSetupMixin,
    build_mudata_fields,
    get_modality_matrix,
    get_modality_var_names,
    registered_modalities,
    validate_mudata,
)
from ._save import SafeSaveMixin, check_genes, read_model_meta, write_model

__all__ = [
    "MODALITY_KINDS",
    "ModalityKind",
    "MuDataSetupMixin",
    "SafeSaveMixin",
    "build_mudata_fields",
    "check_genes",
    "get_modality_matrix",
    "get_modality_var_names",
    "read_model_meta",
    "registered_modalities",
    "validate_mudata",
    "write_model",
]
