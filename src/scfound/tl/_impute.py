"""``sf.tl.impute``: fill in dropped-out expression, or genes the data does not measure."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._keys import imputed_key
from scfound._utils import check_scale

from ._methods import Result
from ._run import modality, run

VERB = "impute"


def impute(
    adata: AnnData | MuData,
    method: str | None = None,
    *,
    reference: AnnData | MuData | None = None,
    genes: list[str] | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
    scale: Literal["counts", "log1p"] = "counts",
    key_added: str | None = None,
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
    scRNA-seq ``reference`` of the same tissue (CellPLM, stAI). The methods, their options and
    where each writes are listed in the docs page "Verbs and methods".

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``); a MuData reads modality ``mod``.
    method
        ``"spaformer"``, ``"cellplm"`` or ``"stai"``; ``None`` picks CellPLM when a
        ``reference`` is given, SpaFormer when ``obsm[spatial_key]`` exists.
    reference
        A reference with raw counts that measures the genes to impute (CellPLM, stAI).
    genes
        Genes to impute; default: for SpaFormer every gene, with a reference every reference
        gene ``adata`` lacks.
    layer, reference_layer
        Layers with the raw counts of ``adata`` and ``reference``; ``None`` uses ``.X``.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    group_key
        Column of ``adata.obs`` with the cells processed together (fields of view, samples,
        slices). ``None``: SpaFormer cuts the section into tiles of about 500 cells (in the
        model's own AnnData), CellPLM and stAI take all cells as one.
    model
        A trained model of ``method`` to apply instead of training one (for CellPLM also a
        pre-trained one to fine-tune, or the prefix of an authors' checkpoint).
    scale
        ``"counts"``: expected counts at each cell's own depth, so the result can stand in for
        counts in scanpy; ``"log1p"``: log-normalised (library 1e4).
    key_added
        Where to write; default ``"<method>_imputed"``.
    max_epochs
        Training epochs when no ``model`` is given (``None``: the method's default).
    model_kwargs, train_kwargs
        Passed to the model class and to its ``train`` method.
    seed
        Random seed of the initial weights and of training.
    mod
        Modality of a MuData ``adata`` (and ``reference``) to read and write.
    return_model
        Also return the model, so that another verb can reuse it (``model=``).
    copy
        Return a modified copy instead of writing into ``adata``.
    sample_key
        Deprecated name of ``group_key``.
    **options
        Options of the method (SpaFormer: ``keep_observed``, ``batch_key``; CellPLM:
        ``gene_key``, ``reference_group_key``; stAI: ``temperature``); an option the method does
        not know is an error.

    Returns
    -------
    ``None``, the modified copy when ``copy=True``, the model when ``return_model=True`` (or
    ``(copy, model)`` with both). Writes

    * ``adata.layers[key_added]`` when every measured gene is imputed (float32, cells x genes);
    * otherwise ``adata.obsm[key_added]``, a DataFrame (cells x imputed genes);
      :func:`scfound.tl.imputed_anndata` turns it into an AnnData for scanpy and squidpy plots;
    * ``adata.uns['scfound']['impute'][key_added]``: the parameters of the run and final losses.

    Examples
    --------
    >>> adata = sf.datasets.osmfish()
    >>> model = sf.tl.impute(adata, layer="counts", return_model=True)
    >>> sf.tl.embed(adata, model=model)  # reuses the fit
    """
    check_scale(scale)
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
    key_added = key_added or imputed_key(method)
    return run(
        VERB,
        adata,
        method,
        common={"genes": None if genes is None else list(genes), "scale": scale},
        options=options,
        write=_write,
        key_added=key_added,
        mod=mod,
        copy=copy,
        return_model=return_model,
        reference=reference,
        group_key=group_key,
        sample_key=sample_key,
        layer=layer,
        reference_layer=reference_layer,
        spatial_key=spatial_key,
        model=model,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    """Every measured gene, in order: a layer; anything else: a DataFrame in ``obsm``."""
    frame = result.values
    if list(map(str, frame.columns)) == list(adata.var_names):
        adata.layers[key] = frame.to_numpy(dtype=np.float32)
    else:
        adata.obsm[key] = frame.astype(np.float32)
