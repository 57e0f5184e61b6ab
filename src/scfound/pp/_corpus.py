"""Join datasets with different gene panels into one training corpus."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scfound._constants import (
    CORPUS_DATASET_KEY,
    CORPUS_SAMPLE_KEY,
    DEFAULT_SPATIAL_KEY,
    MEASURED_KEY,
)
from scfound._utils import (
    check_expression,
    check_spatial_shape,
    get_matrix,
    get_obs_column,
    layer_name,
    resolve_group_key,
)
from scfound._validate import check_anndata, check_cells_and_genes


def build_corpus(
    adatas: Mapping[str, AnnData],
    *,
    layer: str | Mapping[str, str | None] | None = None,
    group_key: str | Mapping[str, str | None] | None = None,
    spatial_key: str = DEFAULT_SPATIAL_KEY,
    gene_key: str | None = None,
    keep_obs: tuple[str, ...] = (),
    sample_key: str | Mapping[str, str | None] | None = None,
) -> AnnData:
    """Concatenate datasets measured on different gene panels into one corpus AnnData.

    The corpus holds the union of the genes (sparse counts; a gene a dataset did not measure is
    0 there) and records which genes each dataset measured in ``varm["measured"]``, so that a
    :class:`~scfound.CellPLM` trained on it scores each cell only on its own panel.

    Parameters
    ----------
    adatas
        Datasets by name, each cells x genes with raw counts.
    layer
        Layer with the counts (``None``: ``.X``), for all datasets or per dataset name.
    group_key
        Column of ``obs`` with the group of each cell (tissue sample, field of view, tile: the
        cells a model processes together), for all datasets or per dataset; ``None`` makes each
        dataset one group.
    spatial_key
        Key of coordinates in ``obsm`` (x, y or x, y, z; the same axes in every dataset that
        has them); datasets without it get NaN (non-spatial cells).
    gene_key
        Column of ``var`` with gene identifiers to join on (default ``var_names``).
    keep_obs
        Columns of ``obs`` to carry over where present (e.g. ``("cell_type",)``).
    sample_key
        Deprecated name of ``group_key``.

    Returns
    -------
    AnnData with counts in ``.X`` (CSR, float32), ``obs["dataset"]``, ``obs["sample"]``
    (each cell's group, ``"<dataset>:<group>"``: pass ``group_key="sample"`` to
    :meth:`scfound.CellPLM.setup_anndata`), ``obsm["spatial"]`` and ``varm["measured"]``
    (genes x datasets).

    """
    group_key = resolve_group_key(group_key, sample_key, "pp.build_corpus")
    if not isinstance(adatas, Mapping) or not adatas:
        raise ValueError(
            "build_corpus needs a dict of datasets by name, e.g. {'rna': adata_rna}; got "
            f"{type(adatas).__name__}{' (empty)' if isinstance(adatas, Mapping) else ''}."
        )
    for name, adata in adatas.items():
        check_anndata(adata, f"adatas[{name!r}]")
        check_cells_and_genes(adata, f"adatas[{name!r}]")
    genes_per: dict[str, list[str]] = {}
    for name, adata in adatas.items():
        genes = adata.var_names if gene_key is None else adata.var[gene_key]
        genes = pd.Index(np.asarray(genes).astype(str))
        if genes.has_duplicates:
            dup = genes[genes.duplicated()].unique().tolist()
            raise ValueError(f"dataset {name!r} has duplicated genes {dup[:5]}; make them unique.")
        genes_per[name] = genes.tolist()
    union = list(dict.fromkeys(g for genes in genes_per.values() for g in genes))
    position = {g: i for i, g in enumerate(union)}

    blocks, obs, coords = [], [], []
    measured = pd.DataFrame(False, index=union, columns=list(adatas))
    for name, adata in adatas.items():
        lay = layer.get(name) if isinstance(layer, Mapping) else layer
        x = get_matrix(adata, lay)
        check_expression(x, f"{name}: {layer_name(lay)}")
        x = sp.csr_matrix(x, dtype=np.float32)
        cols = np.array([position[g] for g in genes_per[name]])
        # scatter the dataset's columns into the union (on copies: csr_matrix may share the
        # caller's arrays, and sort_indices works in place)
        x = sp.csr_matrix(
            (x.data.copy(), cols[x.indices], x.indptr.copy()), shape=(adata.n_obs, len(union))
        )
        x.sort_indices()
        blocks.append(x)
        measured.loc[genes_per[name], name] = True
        key = group_key.get(name) if isinstance(group_key, Mapping) else group_key
        groups = (
            np.full(adata.n_obs, "all", dtype=object)
            if key is None
            else get_obs_column(adata, key).astype(str)
        )
        frame = pd.DataFrame(
            {
                CORPUS_DATASET_KEY: name,
                CORPUS_SAMPLE_KEY: [f"{name}:{g}" for g in groups],
            },
            index=[f"{name}:{c}" for c in adata.obs_names],
        )
        for col in keep_obs:
            if col in adata.obs:
                frame[col] = adata.obs[col].astype(str).to_numpy()
        obs.append(frame)
        if spatial_key in adata.obsm:
            xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
            check_spatial_shape(xy, f"dataset {name!r}: obsm[{spatial_key!r}]")
            coords.append(xy)
        else:
            coords.append(None)
    # sections (x, y) and volumes (x, y, z) do not mix; non-spatial datasets get NaN rows
    widths = {name: c.shape[1] for name, c in zip(adatas, coords, strict=True) if c is not None}
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"obsm[{spatial_key!r}] has 2 columns (x, y) in some datasets and 3 (x, y, z) in "
            f"others: {widths}; give every spatial dataset of a corpus the same axes."
        )
    width = next(iter(widths.values()), 2)
    coords = [
        np.full((adata.n_obs, width), np.nan) if c is None else c
        for adata, c in zip(adatas.values(), coords, strict=True)
    ]
    corpus = AnnData(
        sp.vstack(blocks, format="csr"),
        obs=pd.concat(obs),
        var=pd.DataFrame(index=pd.Index(union, name="gene")),
    )
    for col in (CORPUS_DATASET_KEY, CORPUS_SAMPLE_KEY, *keep_obs):
        if col in corpus.obs:
            corpus.obs[col] = corpus.obs[col].astype("category")
    corpus.obsm[spatial_key] = np.concatenate(coords)
    corpus.varm[MEASURED_KEY] = measured
    return corpus
