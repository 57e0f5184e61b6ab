"""What several models share: safe save/load, group-wise training and inference, MuData setup."""

from ._fields import GroupObsField, QuietObsmField
from ._group import GroupModelMixin
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
from ._predictor import KeepBest, ModalityPredictorMixin
from ._save import (
    ModelFileError,
    SafeSaveMixin,
    check_genes,
    check_model_data,
    read_model_meta,
    register_fields,
    restore_on_error,
    write_model,
)
from ._training import adam_plan, progress_bar_default, quiet_lightning, run_training

__all__ = [
    "MODALITY_KINDS",
    "GroupModelMixin",
    "GroupObsField",
    "KeepBest",
    "ModalityKind",
    "ModalityPredictorMixin",
    "ModelFileError",
    "MuDataSetupMixin",
    "QuietObsmField",
    "SafeSaveMixin",
    "adam_plan",
    "build_mudata_fields",
    "check_genes",
    "check_model_data",
    "get_modality_matrix",
    "get_modality_var_names",
    "progress_bar_default",
    "quiet_lightning",
    "read_model_meta",
    "register_fields",
    "registered_modalities",
    "restore_on_error",
    "run_training",
    "validate_mudata",
    "write_model",
]
