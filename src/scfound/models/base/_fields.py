"""AnnData fields shared by the models."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi.data.fields import CategoricalObsField, ObsmField


class QuietObsmField(ObsmField):
    """:class:`~scvi.data.fields.ObsmField` that names columns without logging.

    scvi-tools logs "Generating sequential column names" (or "Using column names from ...") at
    every registration of an ``.obsm`` entry, e.g. the coordinates of every ``setup_anndata``
    call. The columns are named the same way (``uns[colnames_uns_key]``, the columns of a
    DataFrame, else ``0, 1, ...``), silently.
    """

    def _setup_column_names(self, adata: AnnData) -> list | np.ndarray:
        data = self.get_field_data(adata)
        if self.colnames_uns_key is not None:
            return adata.uns[self.colnames_uns_key]
        if isinstance(data, pd.DataFrame):
            return list(data.columns)
        return np.arange(data.shape[1])


class GroupObsField(CategoricalObsField):
    """:class:`~scvi.data.fields.CategoricalObsField` of the groups of cells processed together.

    Group names (fields of view, tiles) only say which cells attend to each other; no parameter
    of the model depends on them. New data given to a trained model may therefore hold groups
    the model never saw: they are added to the categories when the setup is transferred,
    instead of scvi-tools' error for an unknown category.
    """

    def transfer_field(
        self,
        state_registry: dict,
        adata_target: AnnData,
        extend_categories: bool = False,
        **kwargs,
    ) -> dict:
        """Register the groups of ``adata_target``, new ones included."""
        return super().transfer_field(
            state_registry, adata_target, extend_categories=True, **kwargs
        )
