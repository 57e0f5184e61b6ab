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
