"""``sf.tl.impute``: fill in dropped-out expression, or genes the data does not measure."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._docs import doc_adata, doc_params, doc_reference, doc_returns, doc_shared
from scfound._keys import imputed_key
from scfound._utils import check_scale

from ._methods import ADAPTERS, Result
from ._run import modality, run


@doc_params(adata=doc_adata, reference=doc_reference, shared=doc_shared, returns=doc_returns)
def impute(  # noqa: D417 - shared parameters are filled in by doc_params
    adata: AnnData | MuData,
    method: str | None = None,
    *,
    reference: AnnData | MuData | None = None,
    genes: list[str] | None = None,
    scale: Literal["counts", "log1p"] | None = None,
    key_added: str | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
    max_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    mod: str | None = None,
    return_model: bool = False,
    copy: bool = False,
    sample_key: str | None = None,
    **options: Any,
) -> Any:
    """Impute expression with a deep model and write it into ``adata``.

    A method either reconstructs the genes ``adata`` measures (SpaFormer: every entry in the
    context of the cell's field of view) or transfers genes it does not measure from a
    scRNA-seq ``reference`` of the same tissue (CellPLM, stAI).

    Parameters
    ----------
    {adata}
    method
        ``"spaformer"``, ``"cellplm"`` or ``"stai"``; ``None`` picks CellPLM when a
        ``reference`` is given, SpaFormer when ``obsm[spatial_key]`` exists.
    {reference}
    genes
        Genes to impute; default: for SpaFormer every gene, with a reference every reference
        gene ``adata`` lacks.
    scale
        ``"counts"``: expected counts at each cell's own depth, so the result can stand in for
        counts in scanpy; ``"log1p"``: log-normalised (library 1e4). Default: the method's own,
        ``"log1p"`` for stAI (its paper's output), ``"counts"`` for the others.
    key_added
        Where to write; default ``"<method>_imputed"``.
    {shared}

    Returns
    -------
    {returns} Writes

    * ``adata.layers[key_added]`` when every measured gene is imputed (float32, cells x genes);
    * otherwise ``adata.obsm[key_added]``, a DataFrame (cells x imputed genes);
      :func:`scfound.tl.imputed_anndata` turns it into an AnnData for scanpy and squidpy plots;
    * ``adata.uns['scfound']['impute'][key_added]``: the settings of the run and final losses.

    Examples
    --------
    >>> adata = sf.datasets.osmfish()
    >>> model = sf.tl.impute(adata, layer="counts", return_model=True)
    >>> sf.tl.embed(adata, model=model)  # reuses the fit
    """
    if method is None:
        if reference is not None:
            method = "cellplm"
        elif spatial_key in modality(adata, mod).obsm:
            method = "spaformer"
        else:
            raise ValueError(
                f"no method given, no reference and adata.obsm[{spatial_key!r}] is missing: "
                "SpaFormer needs spatial coordinates; pass `spatial_key=`, `reference=` or "
                "`method=`."
            )
    if scale is None:
        adapter = ADAPTERS.get(method) if isinstance(method, str) else None
        scale = adapter.default_scale if adapter is not None else "counts"
    check_scale(scale)
    key_added = key_added or imputed_key(method)
    genes = None if genes is None else [str(g) for g in genes]
    return run(
        "impute",
        locals(),
        common=("genes", "scale"),
        write=_write,
        places=lambda key: [("layers", key), ("obsm", key)],
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    """Every measured gene, in order: a layer; anything else: a DataFrame in ``obsm``."""
    frame = result.values
    if list(map(str, frame.columns)) == list(adata.var_names):
        adata.layers[key] = frame.to_numpy(dtype=np.float32)
    else:
        adata.obsm[key] = frame.astype(np.float32)
