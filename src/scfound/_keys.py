"""Where scfound writes its results: one naming rule per kind of output, and their lookup.

The ``tl`` verbs write with these rules and the ``pl`` functions find results with them, so that a
plot needs a method name, not a key:

======================  ====================================  ==========================
output                  place                                 function
======================  ====================================  ==========================
imputed measured genes  ``layers["<method>_imputed"]``        :func:`imputed_key`
imputed other genes     ``obsm["<method>_imputed"]``          :func:`imputed_key`
                        (DataFrame, gene names as columns)
denoised expression     ``layers["<method>_denoised"]``       :func:`denoised_key`
cell embedding          ``obsm["X_<method>"]``                :func:`embedding_key`
gene embedding          ``varm["X_<method>"]``                :func:`gene_embedding_key`
predicted labels        ``obs["<method>_prediction"]``        :func:`prediction_key`
their confidence        ``obs["<method>_confidence"]``        :func:`confidence_key`
class probabilities     ``obsm["<method>_probabilities"]``    :func:`probabilities_key`
other modality          ``obsm["<method>_<modality>"]``       :func:`modality_key`
matching probabilities  ``obsm["<method>_matching"]``         :func:`matching_key`
run records             ``uns["scfound"][verb][key_added]``   :func:`runs`, :func:`latest_run`
======================  ====================================  ==========================

``<method>`` is the ``method=`` name of the verbs (``"spaformer"``, ``"cellplm"``, ``"stai"``),
or the ``key_added`` a call chose instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from anndata import AnnData

#: ``adata.uns`` key of the run records (as :data:`scfound._utils.UNS_KEY`)
UNS_KEY = "scfound"
#: method assumed for imputations when ``adata.uns`` records no ``impute`` run
DEFAULT_IMPUTE_METHOD = "spaformer"

Where = Literal["layers", "obsm"]


# ---------------------------------------------------------------------------- naming rules
def imputed_key(method: str) -> str:
    """Key of an imputation: ``layers`` for measured genes, ``obsm`` (DataFrame) for others.

    Parameters
    ----------
    method
        Method name, e.g. ``"spaformer"``.

    Returns
    -------
    ``"<method>_imputed"``.

    Examples
    --------
    >>> imputed_key("spaformer")
    'spaformer_imputed'
    """
    return f"{_check_method(method)}_imputed"


def denoised_key(method: str) -> str:
    """Layer of denoised expression, ``"<method>_denoised"``."""
    return f"{_check_method(method)}_denoised"


def embedding_key(method: str) -> str:
    """``obsm`` key of a cell embedding, ``"X_<method>"`` (scanpy's ``X_pca``, ``X_umap``)."""
    return f"X_{_check_method(method)}"


def gene_embedding_key(method: str) -> str:
    """``varm`` key of a gene embedding, ``"X_<method>"``."""
    return f"X_{_check_method(method)}"


def prediction_key(method: str) -> str:
    """``obs`` column of predicted labels, ``"<method>_prediction"``."""
    return f"{_check_method(method)}_prediction"


def confidence_key(method: str) -> str:
    """``obs`` column with the probability of each predicted label, ``"<method>_confidence"``."""
    return f"{_check_method(method)}_confidence"


def probabilities_key(method: str) -> str:
    """``obsm`` key of class probabilities (DataFrame), ``"<method>_probabilities"``."""
    return f"{_check_method(method)}_probabilities"


def modality_key(method: str, modality: str) -> str:
    """``obsm`` key of a predicted modality (DataFrame), ``"<method>_<modality>"``.

    Parameters
    ----------
    method
        Method name.
    modality
        Name of the predicted modality, e.g. ``"protein"``.
    """
    return f"{_check_method(method)}_{_check_method(modality, 'modality')}"


def matching_key(method: str) -> str:
    """``obsm`` key of matching probabilities (sparse, cells x other cells)."""
    return f"{_check_method(method)}_matching"


# ---------------------------------------------------------------------------- run records
def runs(adata: AnnData, verb: str) -> dict[str, dict[str, Any]]:
    """The recorded runs of a verb, ``{key_added: record}``, oldest first.

    A record written before runs accumulated (``uns["scfound"][verb]`` holding one record) is
    returned as one run under its ``key_added``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    verb
        ``"impute"``, ``"embed"``, ``"annotate"``, ``"denoise"``, ...

    Returns
    -------
    A new dict (the records themselves are not copied); empty when nothing is recorded.
    """
    store = adata.uns.get(UNS_KEY, {})
    entry = store.get(verb) if isinstance(store, Mapping) else None
    if not isinstance(entry, Mapping):
        return {}
    if isinstance(entry.get("method"), str):  # one record, the layout before runs accumulated
        return {str(entry.get("key_added", entry["method"])): dict(entry)}
    out = {str(k): v for k, v in entry.items() if isinstance(v, Mapping)}
    if out and all(isinstance(r.get("time"), str) for r in out.values()):
        # records that carry a time stamp are ordered by it (h5ad does not keep dict order)
        out = dict(sorted(out.items(), key=lambda item: item[1]["time"]))
    return out


def latest_run(
    adata: AnnData, verb: str, method: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The most recent recorded run of ``verb`` (of ``method``, when given).

    Parameters
    ----------
    adata
        Annotated data matrix.
    verb
        Verb whose records to read.
    method
        Only runs recorded with this ``method``.

    Returns
    -------
    ``(key_added, record)``, or ``None`` when no such run is recorded. Runs are ordered by their
    ``"time"`` field when every record has one, otherwise by the order of the records.
    """
    found = [
        (key, record)
        for key, record in runs(adata, verb).items()
        if method is None or record.get("method") == method
    ]
    return found[-1] if found else None


def default_method(adata: AnnData, verb: str = "impute", fallback: str | None = None) -> str:
    """The method of the latest recorded run of ``verb``, else ``fallback``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    verb
        Verb whose records to read.
    fallback
        Returned when no run with a method is recorded; default :data:`DEFAULT_IMPUTE_METHOD`
        for ``"impute"``.

    Raises
    ------
    ValueError
        If no run is recorded and there is no fallback.
    """
    latest = latest_run(adata, verb)
    if latest is not None and isinstance(latest[1].get("method"), str):
        return latest[1]["method"]
    if fallback is None and verb == "impute":
        fallback = DEFAULT_IMPUTE_METHOD
    if fallback is None:
        raise ValueError(
            f"adata.uns[{UNS_KEY!r}] records no {verb!r} run, so the method cannot be guessed; "
            "pass `method=`."
        )
    return fallback


# ---------------------------------------------------------------------------- lookup
def find_imputed(adata: AnnData, method: str | None = None) -> tuple[Where, str]:
    """Where the imputation of ``method`` is stored: ``("layers", key)`` or ``("obsm", key)``.

    The key is the ``key_added`` of the latest recorded ``impute`` run of ``method`` when that
    result is still in ``adata``, otherwise ``"<method>_imputed"`` (:func:`imputed_key`); a layer
    of that name is preferred to an ``obsm`` entry.

    Parameters
    ----------
    adata
        Annotated data matrix.
    method
        Method name; default the method of the latest recorded ``impute`` run, else
        ``"spaformer"``.

    Returns
    -------
    ``(where, key)`` with ``where`` ``"layers"`` (cells x measured genes) or ``"obsm"`` (a
    DataFrame, gene names as columns).

    Raises
    ------
    KeyError
        If neither ``layers`` nor ``obsm`` holds the imputation.

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> adata = AnnData(np.ones((3, 2), dtype=np.float32))
    >>> adata.layers["spaformer_imputed"] = adata.X.copy()
    >>> find_imputed(adata)
    ('layers', 'spaformer_imputed')
    """
    if method is None:
        latest = latest_run(adata, "impute")
        method = default_method(adata, "impute")
        candidates = [latest[0]] if latest is not None else []
    else:
        latest = latest_run(adata, "impute", method)
        candidates = [latest[0]] if latest is not None else []
    candidates.append(imputed_key(method))
    for key in dict.fromkeys(candidates):
        if key in adata.layers:
            return "layers", key
        if key in adata.obsm:
            return "obsm", key
    raise KeyError(
        f"no imputation of method {method!r}: {_or(candidates)} is neither in adata.layers "
        f"({list(adata.layers.keys())}) nor in adata.obsm ({list(adata.obsm.keys())}). Run "
        f"scfound.tl.impute(adata, method={method!r}) first, or pass the key explicitly."
    )


def find_embedding(adata: AnnData, method: str | None = None) -> str:
    """``obsm`` key of the cell embedding of ``method`` (default: the latest ``embed`` run).

    Parameters
    ----------
    adata
        Annotated data matrix.
    method
        Method name; default the latest recorded ``embed`` run.

    Raises
    ------
    KeyError
        If the embedding is not in ``adata.obsm``.
    ValueError
        If ``method`` is None and no ``embed`` run is recorded.
    """
    latest = latest_run(adata, "embed", method)
    if method is None:
        method = default_method(adata, "embed")
    candidates = ([latest[0]] if latest is not None else []) + [embedding_key(method)]
    for key in dict.fromkeys(candidates):
        if key in adata.obsm:
            return key
    raise KeyError(
        f"no embedding of method {method!r}: {_or(candidates)} not in adata.obsm "
        f"({list(adata.obsm.keys())}). Run scfound.tl.embed(adata, method={method!r}) first."
    )


def find_prediction(adata: AnnData | Any, method: str | None = None) -> tuple[str, str | None]:
    """``obs`` columns of the labels predicted by ``method`` and of their confidence.

    Parameters
    ----------
    adata
        Annotated data matrix, or a DataFrame such as ``adata.obs`` (then no run records are
        read).
    method
        Method name or ``key_added`` of an ``annotate`` call. Default: the latest recorded
        ``annotate`` run, else the one column whose name ends in ``"_prediction"``.

    Returns
    -------
    ``(prediction column, confidence column or None when absent)``.

    Raises
    ------
    KeyError
        If the column is missing, or ``method`` is None and it cannot be told which of several
        ``*_prediction`` columns to use.
    """
    obs = adata.obs if isinstance(adata, AnnData) else adata
    columns = [str(c) for c in obs.columns]
    if method is None and isinstance(adata, AnnData):
        latest = latest_run(adata, "annotate")
        if latest is not None:
            method = latest[0]
    if method is None:
        found = [c for c in columns if c.endswith("_prediction")]
        if len(found) != 1:
            raise KeyError(
                "no annotate run is recorded and "
                + (f"several prediction columns exist: {found}" if found else "no column of obs")
                + (" ends in '_prediction'" if not found else "")
                + "; pass `method=` or the column."
            )
        method = found[0][: -len("_prediction")]
    column = prediction_key(method)
    if column not in columns:
        shown = [c for c in columns if c.endswith("_prediction")]
        raise KeyError(
            f"no labels predicted by {method!r}: obs has no column {column!r} (prediction "
            f"columns: {shown}). Run scfound.tl.annotate(..., method={method!r}) first."
        )
    confidence = confidence_key(method)
    return column, confidence if confidence in columns else None


# ---------------------------------------------------------------------------- helpers
def _check_method(method: str, what: str = "method") -> str:
    if not isinstance(method, str) or not method:
        raise ValueError(f"{what} must be a non-empty string, got {method!r}.")
    return method


def _or(keys: list[str]) -> str:
    unique = list(dict.fromkeys(keys))
    return " or ".join(repr(k) for k in unique)
