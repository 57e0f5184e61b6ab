"""``sf.tl.imputed_anndata``: imputed genes of ``obsm`` as an AnnData for scanpy and squidpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from scfound._keys import imputed_key
from scfound._validate import check_anndata


def imputed_anndata(adata: AnnData, key: str | None = None, method: str = "stai") -> AnnData:
    """The imputed genes in ``adata.obsm[key]`` as a new AnnData, for scanpy and squidpy plots.

    Parameters
    ----------
    adata
        AnnData with a cells x genes DataFrame in ``obsm[key]`` (written by
        :func:`scfound.tl.impute` with a reference).
    key
        Key of the DataFrame; default ``"<method>_imputed"``.
    method
        Method whose imputation to read when ``key`` is not given.

    Returns
    -------
    AnnData with the imputed values in ``X``, the genes as ``var_names``, and copies of ``obs``
    and ``obsm['spatial']`` (when present) of ``adata``.

    Examples
    --------
    >>> imputed = sf.tl.imputed_anndata(adata_sp)
    >>> sq.pl.spatial_scatter(imputed, color="Mbp", shape=None)

    """
    check_anndata(adata)
    key = key or imputed_key(method)
    if key not in adata.obsm:
        raise KeyError(f"adata.obsm[{key!r}] not found (obsm has {list(adata.obsm.keys())}).")
    frame = adata.obsm[key]
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"adata.obsm[{key!r}] is not a DataFrame of imputed genes.")
    obsm = {k: np.array(adata.obsm[k]) for k in ("spatial",) if k in adata.obsm}
    return AnnData(
        frame.to_numpy(dtype=np.float32),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=frame.columns.astype(str)),
        obsm=obsm,
    )
