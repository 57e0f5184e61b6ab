"""SAILERX: paired RNA + ATAC integration with structural similarity (Cao et al., NAR 2022)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck
from scvi.model.base import BaseModelClass

from scfound._constants import TARGET_SUM
from scfound._normalize import library_size, log_normalize
from scfound._utils import check_expression, get_matrix

from ..base import (
    MuDataSetupMixin,
    SafeSaveMixin,
    build_mudata_fields,
    check_model_data,
    restore_on_error,
    validate_mudata,
)
from ..sailer._model import (
    SAILERMixin,
    accessibility_stats,
    check_vae_args,
    depth_stats,
)
from ._data import CellDataSplitter
from ._module import PAIRED_KEY, REFERENCE_KEY, WEIGHT_KEY, SAILERXModule

#: ``chr1:100-200``, ``chr1-100-200``, ``chr1_100_200``: chromosome, start, end
PEAK_NAME = re.compile(r"^(?P<chrom>.+?)[:_-](?P<start>\d+)[-_](?P<end>\d+)$")

#: short names accepted as ``modalities`` keys, for the ``<kind>_layer`` arguments
_ALIASES = {"atac": "atac_layer", "rna": "rna_layer"}

#: ``setup_mudata`` arguments ``modalities`` may map to a modality
_MAPPABLE = ("atac_layer", "rna_layer", "batch_key", "rna_embedding_key", "paired_key")


def peak_chromosomes(var: pd.DataFrame, var_names: pd.Index, chrom_key: str | None) -> np.ndarray:
    """Chromosome of every peak: ``var[chrom_key]``, else parsed from the peak names.

    Parameters
    ----------
    var
        The ATAC modality's ``var``.
    var_names
        Its peak names (``chr1:100-200``, ``chr1-100-200`` or ``chr1_100_200``).
    chrom_key
        Column of ``var`` with chromosomes; ``None``: one group for all peaks (the fallback
        without coordinates: one encoder network over the whole genome).

    Raises
    ------
    ValueError
        If ``var`` has no ``chrom_key`` column and a peak name does not parse, or the column has
        missing values.
    """
    names = pd.Index(var_names).astype(str)
    if chrom_key is None:
        return np.full(len(names), "all", dtype=object)
    if chrom_key in var.columns:
        column = var[chrom_key]
        if column.isna().any():
            raise ValueError(
                f"atac.var[{chrom_key!r}] (`chrom_key`) has {int(column.isna().sum())} missing "
                "values; every peak needs its chromosome."
            )
        return column.astype(str).to_numpy(dtype=object)
    parsed = names.str.extract(PEAK_NAME)["chrom"]
    if parsed.isna().any():
        bad = names[parsed.isna().to_numpy()][:3].tolist()
        raise ValueError(
            f"cannot group the peaks by chromosome: atac.var has no column {chrom_key!r} "
            f"(`chrom_key`) and peak names such as {bad} are not of the form chr:start-end, "
            "chr-start-end or chr_start_end. Add the chromosomes as a var column and pass "
            "chrom_key=<column>, or pass chrom_key=None for one network over all peaks."
        )
    return parsed.to_numpy(dtype=object)


def chromosome_groups(chroms: np.ndarray) -> tuple[np.ndarray, list[str], list[int]]:
    """Column order grouping the peaks by chromosome (chromosomes in natural order).

    Returns
    -------
    ``(order, names, sizes)``: peak positions in grouped order, the chromosome names and the
    peaks of each.
    """

    def natural(name: str) -> tuple:
        core = name[3:] if name.lower().startswith("chr") else name
        return (0, int(core), "") if core.isdigit() else (1, 0, core)

    chroms = np.asarray(chroms).astype(str)
    names = sorted(set(chroms.tolist()), key=natural)
    rank = {name: i for i, name in enumerate(names)}
    codes = np.array([rank[c] for c in chroms], dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(names)).tolist()
    return order, names, [int(s) for s in sizes]


def alignment_weights(rna_depth: np.ndarray, atac_depth: np.ndarray) -> np.ndarray:
    """SAILERX's per-cell weights: min-max normalised ``log(depth_RNA / depth_ATAC)``.

    Both depths are first divided by their maximum; cells whose ATAC is shallow relative to
    their RNA get the highest weight (1), the opposite extreme 0. All cells equal: all 1.
    """
    d_r = np.maximum(np.asarray(rna_depth, float), 1.0)
    d_a = np.maximum(np.asarray(atac_depth, float), 1.0)
    w = np.log((d_r / d_r.max()) / (d_a / d_a.max()))
    w = w - w.min()
    return (w / w.max() if w.max() > 0 else np.ones_like(w)).astype(np.float32)


def rna_pca(counts, n_comps: int, seed: int = 0) -> np.ndarray:
    """PCA of log1p CP10k RNA (2,000 most variable genes when more, scaled, clipped at 10)."""
    import scanpy as sc

    tmp = AnnData(log_normalize(sp.csr_matrix(counts, dtype=np.float32), TARGET_SUM))
    if tmp.n_vars > 2000:
        sc.pp.highly_variable_genes(tmp, n_top_genes=2000, subset=True)
    sc.pp.scale(tmp, max_value=10)
    n = int(min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n, random_state=seed, svd_solver="arpack")
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float32)


def _modalities(modalities: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``modalities`` with the ``"atac"``/``"rna"`` aliases spelled as ``<kind>_layer``."""
    if modalities is None or not isinstance(modalities, Mapping):
        raise ValueError(
            "`modalities` must be a dict naming the modalities, e.g. modalities={'atac': "
            f"'atac', 'rna': 'rna'}}; got {modalities!r}."
        )
    out: dict[str, str | None] = {}
    for key, mod in modalities.items():
        arg = _ALIASES.get(key, key)
        if arg not in _MAPPABLE:
            raise ValueError(
                f"`modalities` has key {key!r}; expected some of {['atac', 'rna', *_MAPPABLE]}."
            )
        out[arg] = mod
    return out


class SAILERX(SafeSaveMixin, MuDataSetupMixin, SAILERMixin, BaseModelClass):
    """SAILERX: SAILER's invariant ATAC model whose local structure follows the RNA.

    Cao, Fu, Xie (2022), *Integrating multimodal single-cell data with structural similarity*
    (SAILERX), Nucleic Acids Research 50(21):e121; thesis chapter 3. Only the chromatin is
    modelled: the binarised peaks of a cell, grouped by chromosome, go through one small
    network per chromosome (BABEL's layout, 64-32 units) into a ``n_latent``-dimensional
    Gaussian posterior; the decoder mirrors it and reads the confounders (standardised log
    depth, one-hot batch). The loss is SAILER's -- weighted Bernoulli reconstruction, KL to
    the prior and the mutual-information penalty ``E KL(q(z|x) || q(z))`` (mean pairwise KL in
    the minibatch), with warm-up and cyclical annealing -- plus ``local_weight`` times the
    cross-modal term: within a minibatch, the cosine-similarity matrix of the posterior means
    is pulled towards that of a fixed RNA reference embedding, pair ``(j, k)`` weighted by
    ``w_j w_k`` (``w``: min-max normalised ``log(depth_RNA / depth_ATAC)``, so that cells with
    poor chromatin lean on their RNA), only over pairs of cells that both have RNA and share a
    batch. The RNA is never modelled: the reference is the PCA of log1p CP10k counts (computed
    here, never written into the MuData) or any embedding the user names.

    Hybrid training: cells of the MuData without RNA (absent from the RNA modality, or marked by
    ``paired_key``) train in the same minibatches with the invariant loss only, and are
    embedded in the same space.

    Differences from the authors' code (``uci-cbcl/SAILERX``), on purpose:

    * the positive weight of the Bernoulli loss up-weights the accessible entries only (their
      main loop passes it as ``weight=``, scaling every entry);
    * sampling and KL use the same ``std = exp(log var / 2)``;
    * the loss is per cell (means over the minibatch; the cross-modal term summed over pairs
      and divided by the minibatch size) and keeps SAILER's ``(1 + lambda)`` on the
      reconstruction, so ``local_weight`` is on another scale than their ``GAMMA = 6000``;
    * hybrid training mixes paired and ATAC-only cells in every minibatch (the cross-modal
      term masked for the latter) instead of an extra optimiser step every third iteration,
      and the learning rate decays once per epoch (theirs also per iteration in hybrid mode);
    * it runs on CPU or GPU and reads MuData (theirs is GPU-only with a custom h5 file).

    Parameters
    ----------
    adata
        MuData registered with :meth:`setup_mudata`.
    registry
        Registry of a saved model (used by :meth:`load`).
    n_latent
        Latent dimensions (paper: 50).
    n_hidden
        Widths of every per-chromosome network (authors: 64, 32).
    mi_weight
        ``lambda``, weight of the mutual-information penalty (paper: 1).
    pos_weight
        Weight of the accessible entries in the binary cross-entropy (default 1); ``None``:
        the ratio of inaccessible to accessible entries of the data.
    local_weight
        ``Gamma``, weight of the cross-modal term (0 gives SAILER with this architecture).
    n_rna_pcs
        Principal components of the default RNA reference (paper: 50).
    weighting
        ``"depth"``: the per-cell weights above; ``"uniform"``: every paired cell 1 (the only
        choice when the reference is a user embedding without RNA counts).

    Examples
    --------
    >>> import scfound as sf
    >>> sf.SAILERX.setup_mudata(mdata, atac_layer="counts", rna_layer="counts",
    ...                         modalities={"atac": "atac", "rna": "rna"})
    >>> model = sf.SAILERX(mdata)
    >>> model.train(max_epochs=50)
    >>> mdata.obsm["X_sailerx"] = model.get_latent_representation()
    """

    _module_cls = SAILERXModule
    _data_splitter_cls = CellDataSplitter

    def __init__(
        self,
        adata: MuData | None = None,
        registry: dict | None = None,
        n_latent: int = 50,
        n_hidden: Sequence[int] = (64, 32),
        mi_weight: float = 1.0,
        pos_weight: float | None = 1.0,
        local_weight: float = 100.0,
        n_rna_pcs: int = 50,
        weighting: Literal["depth", "uniform"] = "depth",
    ):
        super().__init__(adata, registry)
        n_hidden = check_vae_args(
            n_hidden, n_latent, mi_weight, pos_weight, local_weight=local_weight
        )
        if int(n_rna_pcs) != n_rna_pcs or n_rna_pcs < 1:
            raise ValueError(f"n_rna_pcs must be a positive integer, got {n_rna_pcs!r}.")
        if weighting not in ("depth", "uniform"):
            raise ValueError(f"weighting must be 'depth' or 'uniform', got {weighting!r}.")
        self.n_rna_pcs, self.weighting = int(n_rna_pcs), weighting
        args = self.adata_manager.registry["setup_args"]
        mods = _modalities(args["modalities"])
        atac = self.adata.mod[mods["atac_layer"]]
        chroms = peak_chromosomes(atac.var, atac.var_names, args.get("chrom_key"))
        order, self.chromosomes_, sizes = chromosome_groups(chroms)
        X = get_matrix(atac, args.get("atac_layer"))
        per_cell, _ = accessibility_stats(X)
        stats = depth_stats(per_cell, X.shape[1])
        if pos_weight is None:
            pos_weight = stats["pos_weight"]
        self.module = self._module_cls(
            n_input=atac.n_vars,
            chrom_sizes=sizes,
            n_batch=self.summary_stats.n_batch,
            n_hidden=n_hidden,
            n_latent=int(n_latent),
            mi_weight=mi_weight,
            pos_weight=pos_weight,
            local_weight=local_weight,
        )
        self.module.peak_order.copy_(torch.as_tensor(order))
        self.module.depth_mean.fill_(stats["depth_mean"])
        self.module.depth_std.fill_(stats["depth_std"])
        self._cell_data = self._compute_cell_data(args, mods, library_size(X))
        n_paired = int(self._cell_data[PAIRED_KEY].sum())
        self._model_summary_string = (
            f"SAILERX: n_latent={n_latent}, n_hidden={n_hidden}, chromosomes={len(sizes)}, "
            f"mi_weight={mi_weight}, local_weight={local_weight}, pos_weight={pos_weight:.3g}, "
            f"n_batch={self.summary_stats.n_batch}, paired cells={n_paired} of "
            f"{self.adata.n_obs}, weighting={weighting!r}"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------ cell data
    def _compute_cell_data(
        self, args: dict, mods: dict, atac_depth: np.ndarray
    ) -> dict[str, np.ndarray]:
        """RNA reference, paired mask and alignment weights of every cell (model-held)."""
        mdata: MuData = self.adata
        paired = paired_mask(mdata, mods, args.get("paired_key"))
        idx = np.flatnonzero(paired)
        rna_mod = mods.get("rna_layer")
        counts = None
        if rna_mod is not None:
            rna = mdata.mod[rna_mod]
            rows = rna.obs_names.get_indexer(mdata.obs_names[idx])
            counts = sp.csr_matrix(get_matrix(rna, args.get("rna_layer")))[rows]
        if args.get("rna_embedding_key") is not None:
            emb = embedding_rows(mdata, mods, args["rna_embedding_key"], idx)
        else:
            emb = rna_pca(counts, self.n_rna_pcs)
        reference = np.zeros((mdata.n_obs, emb.shape[1]), dtype=np.float32)
        reference[idx] = emb
        weight = np.zeros(mdata.n_obs, dtype=np.float32)
        if self.weighting == "depth" and counts is not None:
            weight[idx] = alignment_weights(library_size(counts), atac_depth[idx])
        else:
            weight[idx] = 1.0
        return {
            REFERENCE_KEY: reference,
            PAIRED_KEY: paired.astype(np.float32),
            WEIGHT_KEY: weight,
        }

    @property
    def paired_cells(self) -> np.ndarray:
        """Boolean mask of the cells with an RNA reference (the others trained ATAC-only)."""
        return self._cell_data[PAIRED_KEY] > 0

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        atac_layer: str | None = None,
        rna_layer: str | None = None,
        rna_embedding_key: str | None = None,
        batch_key: str | None = None,
        paired_key: str | None = None,
        hybrid: bool = False,
        chrom_key: str | None = "chrom",
        modalities: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register paired RNA + ATAC (and ATAC-only cells) of ``mdata`` with SAILERX.

        Only the ATAC counts (and the batch) become scvi-tools fields; the RNA is read once
        when the model is built. Nothing is written into ``mdata`` beyond scvi-tools' registry
        entries, and nothing at all when a check fails.

        Parameters
        ----------
        mdata
            The ATAC modality holds every cell (in ``mdata.obs_names`` order); the RNA modality
            the paired ones.
        atac_layer
            Layer of the ATAC modality with non-negative integer counts (``None``: ``.X``).
        rna_layer
            Layer of the RNA modality with counts (``None``: ``.X``); its PCA of log1p CP10k is
            the default reference and its totals set the alignment weights.
        rna_embedding_key
            ``obsm`` key of a reference embedding to use instead of the PCA (scVI, scANVI,
            Harmony, ...), in ``mdata.obsm`` or, when ``modalities`` maps it, in a modality's
            ``obsm``; it must be finite for every paired cell.
        batch_key
            ``obs`` column with batches: a confounder of the decoder, and the cross-modal term
            compares cells of one batch only.
        paired_key
            Boolean ``obs`` column: ``True`` for cells whose RNA is used, ``False`` for cells
            trained from ATAC alone (hybrid training); default: the cells of the RNA modality.
        hybrid
            Allow cells without RNA (absent from the RNA modality). Without it (and without
            ``paired_key``) a MuData whose modalities hold different cells is refused, since that
            is usually a mistake.
        chrom_key
            ``atac.var`` column with the chromosome of each peak; when it is missing, the
            chromosomes are parsed from peak names (``chr1:100-200``, ``chr1-100-200``,
            ``chr1_100_200``). ``None``: one encoder network over all peaks (the fallback for
            peaks without coordinates).
        modalities
            Maps ``"atac"`` / ``"rna"`` (or ``atac_layer`` / ``rna_layer``) to modality names,
            and optionally ``batch_key``, ``paired_key``, ``rna_embedding_key`` to the modality
            that holds them (default ``mdata`` itself), e.g. ``{"atac": "atac", "rna": "rna"}``.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        Raises
        ------
        KeyError
            A modality, layer, column or ``obsm`` key is missing.
        ValueError
            Negative, non-integer or non-finite ATAC counts; negative RNA counts; cells in the
            RNA but not the ATAC modality; unpaired cells without ``hybrid``/``paired_key``; a
            batch or paired column with missing values; peaks without chromosome; a reference
            embedding with non-finite values.
        """
        check_model_data(mdata, "mdata", mudata=True)
        setup_method_args = cls._get_setup_method_args(**locals())
        mods = _modalities(modalities)
        atac_mod, rna_mod = mods.get("atac_layer"), mods.get("rna_layer")
        if atac_mod is None:
            raise ValueError(
                "SAILERX needs the chromatin: pass modalities={'atac': <modality>, 'rna': "
                f"<modality>}} (modalities of mdata: {list(mdata.mod)})."
            )
        if rna_mod is None and rna_embedding_key is None:
            raise ValueError(
                "SAILERX needs an RNA reference: map modalities['rna'] to the RNA modality "
                "(its PCA is the reference) or name an obsm embedding as rna_embedding_key."
            )
        if rna_mod is not None and rna_mod not in mdata.mod:
            raise KeyError(
                f"modalities['rna'] = {rna_mod!r}, but mdata has no modality {rna_mod!r} "
                f"(available modalities: {list(mdata.mod)})."
            )
        fields_args = {"atac_layer": atac_layer, "batch_key": batch_key}
        field_mods = {k: mods.get(k) for k in fields_args}
        partial = [m for m in mdata.mod if m != atac_mod]
        validate_mudata(
            mdata, field_mods, fields_args, required=("atac",), check_counts=False, partial=partial
        )
        atac = mdata.mod[atac_mod]
        where = f"mdata.mod[{atac_mod!r}]" + (
            "" if atac_layer is None else f".layers[{atac_layer!r}]"
        )
        X = get_matrix(atac, atac_layer)
        check_expression(X, where if atac_layer else where + ".X", counts=True, integer=True)
        peak_chromosomes(atac.var, atac.var_names, chrom_key)
        if rna_mod is not None:
            rna = mdata.mod[rna_mod]
            if rna_layer is not None and rna_layer not in rna.layers:
                raise KeyError(
                    f"rna_layer={rna_layer!r}: layer not found in mdata.mod[{rna_mod!r}].layers "
                    f"(available: {list(rna.layers.keys())})."
                )
            rwhere = f"mdata.mod[{rna_mod!r}]" + (
                ".X" if rna_layer is None else f".layers[{rna_layer!r}]"
            )
            check_expression(get_matrix(rna, rna_layer), rwhere, counts=True)
            if not rna.obs_names.is_unique:
                raise ValueError(f"mdata.mod[{rna_mod!r}].obs_names has duplicated cell names.")
        paired = paired_mask(mdata, mods, paired_key)
        if not paired.all() and not hybrid and paired_key is None:
            raise ValueError(
                f"{int((~paired).sum())} of {mdata.n_obs} cells of mdata have no RNA (they are "
                f"not in modality {rna_mod!r}). Pass hybrid=True to train them from ATAC alone "
                "(SAILERX's hybrid training), or keep the paired cells "
                "(`muon.pp.intersect_obs(mdata)`)."
            )
        if paired.sum() < 2:
            raise ValueError(f"SAILERX needs at least 2 cells with RNA, found {int(paired.sum())}.")
        if rna_embedding_key is not None:
            embedding_rows(mdata, mods, rna_embedding_key, np.flatnonzero(paired))
        if "source_registry" not in kwargs:
            per_cell, per_peak = accessibility_stats(X)
            for what, n in (("cells", (per_cell == 0).sum()), ("peaks", (per_peak == 0).sum())):
                if n:
                    warnings.warn(
                        f"{int(n)} {what} of {where} have no counts; SAILERX keeps them (empty "
                        "cells are embedded at the mean depth, empty peaks learned as closed). "
                        "Filter them out unless that is intended.",
                        UserWarning,
                        stacklevel=2,
                    )
        fields = build_mudata_fields(fields_args, field_mods)
        # the RNA modality may hold fewer cells (hybrid); only the ATAC is registered
        checks = AnnDataManagerValidationCheck(check_fully_paired_mudata=False)
        adata_manager = AnnDataManager(
            fields=fields, setup_method_args=setup_method_args, validation_checks=checks
        )
        with restore_on_error(cls, mdata):
            adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    # -------------------------------------------------------------- training
    def _splitter_kwargs(self) -> dict:
        """The per-cell RNA reference, paired mask and weights, for every minibatch."""
        return {"cell_data": self._cell_data}

    # -------------------------------------------------------------- inference
    def _inference_adata(self, adata: MuData | None) -> MuData:
        """The model's own MuData (the only one SAILERX embeds)."""
        if adata is not None and adata is not self.adata:
            raise ValueError(
                "SAILERX embeds the cells of the MuData it was set up with; to embed other "
                "cells, add them (as ATAC-only cells, hybrid=True) and train on them."
            )
        return self.adata

    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Posterior mean of ``z`` for every cell of the MuData, paired or ATAC-only.

        Parameters
        ----------
        adata
            Must be the model's own MuData (or ``None``); embed new cells by training on them
            (hybrid training puts them in the same space).
        indices
            Cells to embed (default all).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_latent)`` array.
        """
        return self._forward_batches(adata, indices, batch_size, lambda t, inf: inf["qz_m"])


def paired_mask(
    mdata: MuData, mods: Mapping[str, str | None], paired_key: str | None
) -> np.ndarray:
    """Boolean mask over ``mdata.obs_names``: cells with RNA (and ``paired_key`` True)."""
    rna_mod = mods.get("rna_layer")
    if rna_mod is not None:
        paired = mdata.obs_names.isin(mdata.mod[rna_mod].obs_names)
    else:
        paired = np.ones(mdata.n_obs, dtype=bool)
    if paired_key is None:
        return np.asarray(paired)
    holder = mods.get("paired_key")
    obs = mdata.obs if holder is None else mdata.mod[holder].obs
    where = "mdata.obs" if holder is None else f"mdata.mod[{holder!r}].obs"
    if paired_key not in obs.columns:
        raise KeyError(
            f"column {paired_key!r} (`paired_key`) not found in {where} "
            f"(columns: {[str(c) for c in obs.columns]})."
        )
    column = obs[paired_key].reindex(mdata.obs_names)
    if column.isna().any() or not pd.api.types.is_bool_dtype(column):
        raise ValueError(
            f"{where}[{paired_key!r}] (`paired_key`) must be boolean without missing values for "
            f"every cell of mdata; found dtype {column.dtype} with {int(column.isna().sum())} "
            "missing."
        )
    flag = column.to_numpy(dtype=bool)
    lacking = flag & ~paired
    if lacking.any():
        raise ValueError(
            f"{int(lacking.sum())} cells marked True in `paired_key` have no RNA (not in modality "
            f"{rna_mod!r})."
        )
    return flag & paired


def embedding_rows(
    mdata: MuData, mods: Mapping[str, str | None], key: str, idx: np.ndarray
) -> np.ndarray:
    """Rows ``idx`` (positions in ``mdata.obs_names``) of the reference embedding ``key``."""
    holder = mods.get("rna_embedding_key")
    data = mdata if holder is None else mdata.mod[holder]
    where = "mdata.obsm" if holder is None else f"mdata.mod[{holder!r}].obsm"
    if key not in data.obsm:
        raise KeyError(
            f"{key!r} (`rna_embedding_key`) not found in {where} (keys: {list(data.obsm.keys())})."
        )
    values = data.obsm[key]
    values = values.to_numpy() if isinstance(values, pd.DataFrame) else np.asarray(values)
    rows = data.obs_names.get_indexer(mdata.obs_names[idx])
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} paired cells are missing from {where}[{key!r}].")
    out = np.asarray(values[rows], dtype=np.float64)
    if out.ndim != 2 or not np.all(np.isfinite(out)):
        raise ValueError(
            f"{where}[{key!r}] (`rna_embedding_key`) must be a finite 2-D embedding for every "
            "paired cell."
        )
    return out.astype(np.float32)
