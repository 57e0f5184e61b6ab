"""The first check of every public entry point: the data object is what the function needs.

One message template per check, naming the argument, what was expected and what was found, so
that a DataFrame or an array passed where an AnnData belongs fails with an error a user can act
on instead of an ``AttributeError`` deep inside.
"""

from __future__ import annotations

from typing import Any

from anndata import AnnData
from mudata import MuData


def check_anndata(data: Any, name: str = "adata", *, mudata: bool = False) -> None:
    """Raise a ``TypeError`` unless ``data`` is an AnnData (or, with ``mudata``, a MuData).

    Parameters
    ----------
    data
        The object a caller passed.
    name
        The argument's name, for the message.
    mudata
        Accept a MuData too.
    """
    kinds = (AnnData, MuData) if mudata else (AnnData,)
    if isinstance(data, kinds):
        return
    expected = "an AnnData (or MuData)" if mudata else "an AnnData"
    hint = ""
    if type(data).__name__ in ("DataFrame", "ndarray", "csr_matrix", "csr_array"):
        hint = " Wrap a matrix or DataFrame first, e.g. anndata.AnnData(df)."
    elif isinstance(data, MuData):
        hint = " Pass one of its modalities, e.g. mdata.mod['rna']."
    raise TypeError(f"expected {expected} as `{name}`, got {type(data).__name__}.{hint}")


def check_cells_and_genes(
    adata: AnnData, name: str = "adata", *, min_obs: int = 1, min_vars: int = 1
) -> None:
    """Raise a ``ValueError`` for too few cells or genes, or duplicated cell or gene names.

    Parameters
    ----------
    adata
        The data to check.
    name
        The argument's name, for the message.
    min_obs, min_vars
        Fewest cells and genes the caller can work with.
    """
    if adata.n_obs < min_obs or adata.n_vars < min_vars:
        raise ValueError(
            f"`{name}` has {adata.n_obs} cells x {adata.n_vars} genes; at least {min_obs} "
            f"cell(s) and {min_vars} gene(s) are needed."
        )
    for axis, names in (("var_names", adata.var_names), ("obs_names", adata.obs_names)):
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"`{name}.{axis}` has duplicates (e.g. {dup}); make them unique with "
                f"`{name}.{axis.replace('_names', '')}_names_make_unique()`."
            )
