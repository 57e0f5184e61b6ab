"""SAILERX behind ``tl.embed``: a joint RNA + ATAC embedding of a MuData (hybrid cells too)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from scfound.models import SAILERX

from ._base import Inputs, MethodAdapter, Result
from ._minimal import minimal_anndata

#: epochs of a model trained by ``tl.embed`` (the authors train 400 on GPU)
DEFAULT_EPOCHS = 50


class SAILERXAdapter(MethodAdapter):
    """:class:`~scfound.SAILERX` on a MuData with an ATAC and an RNA modality.

    Embeds every cell of the ATAC modality into ``mdata.obsm["X_sailerx"]``; cells without RNA
    (absent from the RNA modality) are trained from ATAC alone when ``hybrid=True``. The batch
    is ``batch_key``, or else ``group_key``. A given ``model`` must have been trained on this
    MuData's cells (SAILERX embeds the cells it was trained on).
    """

    name = "sailerx"
    model_class = SAILERX
    embeds_mudata = True

    def embed(
        self,
        inputs: Inputs,
        *,
        atac: str = "atac",
        rna: str | None = "rna",
        rna_embedding_key: str | None = None,
        batch_key: str | None = None,
        hybrid: bool = False,
        chrom_key: str | None = "chrom",
    ) -> Result:
        """Posterior means of SAILERX's latent space (50 dimensions by default).

        Parameters
        ----------
        inputs
            The verb's shared arguments; ``inputs.adata`` is the MuData, ``layer`` names the
            counts layer of both modalities (``max_epochs`` default 50).
        atac, rna
            Names of the ATAC and RNA modalities (``rna=None`` with ``rna_embedding_key``).
        rna_embedding_key
            Key of ``mdata.obsm`` with an RNA reference embedding to use instead of the PCA.
        batch_key
            Column of ``mdata.obs`` with batches (default ``group_key``).
        hybrid
            Train cells absent from the RNA modality from ATAC alone (SAILERX's hybrid
            training) instead of refusing them.
        chrom_key
            Column of the ATAC ``var`` with chromosomes (else parsed from peak names); ``None``:
            one network over all peaks.
        """
        mdata = inputs.adata
        if not isinstance(mdata, MuData):
            raise TypeError(
                "tl.embed(method='sailerx') embeds the paired RNA + ATAC of a MuData; got "
                f"{type(mdata).__name__}. Pass the MuData (for ATAC alone use method='sailer')."
            )
        batch_key = batch_key if batch_key is not None else inputs.group_key
        model = inputs.model
        if model is None:
            small = _minimal_mudata(mdata, atac, rna, inputs.layer, chrom_key)
            for key in (batch_key,):
                if key is not None:
                    if key not in mdata.obs:
                        raise KeyError(
                            f"column {key!r} (`batch_key`) not found in mdata.obs (columns: "
                            f"{list(mdata.obs.columns)})."
                        )
                    small.obs[key] = mdata.obs[key].reindex(small.obs_names).to_numpy()
            if rna_embedding_key is not None:
                if rna_embedding_key not in mdata.obsm:
                    raise KeyError(
                        f"{rna_embedding_key!r} (`rna_embedding_key`) not found in mdata.obsm "
                        f"(keys: {list(mdata.obsm.keys())})."
                    )
                rows = mdata.obs_names.get_indexer(small.obs_names)
                small.obsm[rna_embedding_key] = np.asarray(mdata.obsm[rna_embedding_key])[rows]
            modalities = {"atac": atac} | ({"rna": rna} if rna is not None else {})
            SAILERX.setup_mudata(
                small,
                atac_layer=inputs.layer,
                rna_layer=inputs.layer if rna is not None else None,
                rna_embedding_key=rna_embedding_key,
                batch_key=batch_key,
                hybrid=hybrid,
                chrom_key=chrom_key,
                modalities=modalities,
            )
            torch.manual_seed(inputs.seed)
            model = SAILERX(small, **inputs.model_kwargs)
            model.train(
                max_epochs=inputs.max_epochs or DEFAULT_EPOCHS,
                seed=inputs.seed,
                **inputs.train_kwargs,
            )
        elif not isinstance(model, SAILERX):
            raise TypeError(f"model must be a trained SAILERX, got {type(model).__name__}.")
        names = pd.Index(model.adata.obs_names)
        missing = ~mdata.obs_names.isin(names)
        if missing.any():
            raise ValueError(
                f"{int(missing.sum())} cells of the MuData (e.g. {mdata.obs_names[missing][0]!r}) "
                "are not cells of the model; SAILERX embeds the cells it was trained on."
            )
        z = model.get_latent_representation()
        values = z[names.get_indexer(mdata.obs_names)]
        params = {"atac": atac, "rna": rna, "batch_key": batch_key, "hybrid": hybrid}
        return Result(values, model, params)


def _minimal_mudata(
    mdata: MuData, atac: str, rna: str | None, layer: str | None, chrom_key: str | None
) -> MuData:
    """A MuData sharing the caller's counts: the ATAC (all cells, mdata order) and the RNA."""
    for name in (atac, rna):
        if name is not None and name not in mdata.mod:
            raise KeyError(
                f"modality {name!r} not found in mdata (modalities: {list(mdata.mod)}); pass "
                "atac= / rna= naming them."
            )
    atac_data = mdata.mod[atac]
    missing = ~mdata.obs_names.isin(atac_data.obs_names)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} cells of mdata are not in modality {atac!r}: SAILERX needs "
            "the chromatin of every cell."
        )
    if not atac_data.obs_names.equals(mdata.obs_names):
        atac_data = atac_data[mdata.obs_names].copy()
    var_keys = [chrom_key] if chrom_key is not None and chrom_key in atac_data.var else []
    parts = {atac: minimal_anndata(atac_data, layer, var_keys=var_keys)}
    if rna is not None:
        parts[rna] = minimal_anndata(mdata.mod[rna], layer)
    return MuData(parts)
