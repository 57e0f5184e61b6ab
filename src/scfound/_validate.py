"""The first check of every public entry point: the data object is what the function needs.

One message template per check, naming the argument, what was expected and what was found, so
that a DataFrame or an array passed where an AnnData belongs fails with an error a user can act
on instead of an ``AttributeError`` deep inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from anndata import AnnData
from mudata import MuData

#: where ``record`` keeps run records (``adata.uns[UNS_KEY][writer][key_added]``)
UNS_KEY = "scfound"


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
    adata: AnnData,
    name: str = "adata",
    *,
    min_obs: int = 1,
    min_vars: int = 1,
    genes: bool = True,
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
    genes
        Whether the caller reads the genes; ``False`` checks neither their number nor their
        names (e.g. for functions of the coordinates alone).
    """
    min_vars = min_vars if genes else 0
    if adata.n_obs < min_obs or adata.n_vars < min_vars:
        need = f"at least {min_obs} cell(s)" + (f" and {min_vars} gene(s)" if genes else "")
        raise ValueError(
            f"`{name}` has {adata.n_obs} cells x {adata.n_vars} genes; {need} are needed."
        )
    axes = [("obs_names", adata.obs_names)]
    if genes:
        axes.insert(0, ("var_names", adata.var_names))
    for axis, names in axes:
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"`{name}.{axis}` has duplicates (e.g. {dup}); make them unique with "
                f"`{name}.{axis.replace('_names', '')}_names_make_unique()`."
            )


def check_obs_keys(adata: AnnData, name: str = "adata", **keys: str | None) -> None:
    """Raise unless each column named in ``keys`` is in ``adata.obs`` and has no missing values.

    Parameters
    ----------
    adata
        The data to check.
    name
        The argument's name, for the message.
    **keys
        The caller's arguments naming ``obs`` columns (``group_key="fov"``); ``None`` is skipped.

    Raises
    ------
    KeyError
        A column is missing (the message names the argument and lists the columns).
    ValueError
        A column has missing values (NaN or None).
    """
    for arg, key in keys.items():
        if key is None:
            continue
        if key not in adata.obs:
            raise KeyError(
                f"column {key!r} (`{arg}`) not found in {name}.obs "
                f"(columns: {list(adata.obs.columns)})."
            )
        n_missing = int(pd.isna(adata.obs[key]).sum())
        if n_missing:
            raise ValueError(
                f"{name}.obs[{key!r}] (`{arg}`) has {n_missing} missing values; fill or drop "
                "those cells first."
            )


def check_key_added(
    adata: AnnData,
    writer: str,
    key_added: str,
    places: Iterable[tuple[str, str]],
    read: Iterable[tuple[str, str]] = (),
) -> None:
    """Refuse, before any work, a ``key_added`` that would replace the caller's own data.

    The one guard of every function that writes under a ``key_added``. A place may be replaced
    when it holds the result of an earlier run of the same ``writer`` under the same
    ``key_added`` (a rerun, recorded in ``adata.uns["scfound"][writer]``); a place this call
    reads, and any other existing entry (raw counts, coordinates, labels, another tool's
    result), are refused. A ``uns["scfound"]`` that is not a mapping is refused too, as the run
    could not be recorded after its result was written.

    Parameters
    ----------
    adata
        The data that would be written to.
    writer
        The function's name, e.g. ``"tl.impute"`` or ``"pp.mask_entries"``; its last part is
        the key of its run records.
    key_added
        The caller's ``key_added``.
    places
        ``(attribute, key)`` pairs the call would write, e.g. ``("layers", "heldout")``.
    read
        ``(attribute, key)`` pairs the call reads (never writable).
    """
    verb = writer.rsplit(".", 1)[-1]
    store = adata.uns.get(UNS_KEY, {})
    if not isinstance(store, Mapping) or not isinstance(store.get(verb, {}), Mapping):
        raise TypeError(
            f"adata.uns[{UNS_KEY!r}] must be a dict of run records (with a dict under "
            f"{verb!r}); got {type(store).__name__}. Rename or delete it first."
        )
    rerun = key_added in store.get(verb, {})
    read = set(read)
    for attr, key in places:
        if (attr, key) in read:
            raise ValueError(
                f"key_added={key_added!r} would overwrite adata.{attr}[{key!r}], which {writer} "
                "reads in this call; pass another key_added."
            )
        if key in getattr(adata, attr) and not rerun:
            raise ValueError(
                f"key_added={key_added!r}: adata.{attr}[{key!r}] already exists and is not the "
                f"result of an earlier {writer} run; pass another key_added so that it is not "
                "replaced."
            )
