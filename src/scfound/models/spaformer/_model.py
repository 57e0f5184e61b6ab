"""SpaFormer: transformer imputation of spatial transcriptomics (cells are tokens)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass

from scfound._constants import DEFAULT_SPATIAL_KEY, GROUP_KEY, SPATIAL_KEY
from scfound._utils import (
    check_expression,
    check_genes_present,
    check_groups,
    check_scale,
    check_spatial_scale,
    get_matrix,
    get_spatial,
    layer_name,
    warn_z_extent,
)
from scfound._validate import check_obs_keys
from scfound.nn import (
    POSITIONAL_ENCODINGS,
    knn_graph,
    laplacian_eigenvectors,
    log_normalize,
    random_walk_pe,
)

from ..base import (
    GroupModelMixin,
    GroupObsField,
    QuietObsmField,
    SafeSaveMixin,
    check_model_data,
    register_fields,
)
from ._module import PE_FEATURES_KEY, SpaFormerModule

logger = logging.getLogger(__name__)

GRAPH_FEATURES: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "lappe": laplacian_eigenvectors,
    "rwpe": random_walk_pe,
}


class SpaFormer(GroupModelMixin, SafeSaveMixin, BaseModelClass):
    """SpaFormer: spatial transcriptomics imputation with a transformer over cell tokens.

    Wen et al. (2023), *Single Cells Are Spatial Tokens: Transformers for Spatial Transcriptomic
    Data Imputation*. Each field of view (or spatial tile) is a sequence whose tokens are its cells;
    a linear-attention (Performer) transformer with a spatial positional encoding encodes every
    cell in the context of its tissue, and a light per-cell decoder reconstructs its expression.
    Training hides entries by bi-level masking (a fraction ``cell_mask_rate`` of cells, then
    ``gene_mask_rate`` of their genes, kept values rescaled to preserve the mean) and scores the
    reconstruction of the hidden entries only.

    Differences from the authors' research code (``wehos/CellT``), on purpose:

    * it installs and runs on CPU or GPU; attention and graph layers are pure torch (no
      ``performer_pytorch``, no DGL);
    * pre-LN transformer blocks as in the paper's equations (the code is post-LN);
    * the loss covers the masked entries only, as in the paper (the code scores every gene of the
      masked cells; ``loss_on="masked_cells"`` reproduces that);
    * the spatial graph is a k-NN graph built inside each step from the step's cells, so it is
      unit-free (no hard-coded 95/150-pixel thresholds) and valid under sub-sampling and DropNode;
    * the decoder ends with a softplus rather than a ReLU, which cannot get stuck at zero;
    * validation uses held-out groups, never the evaluation data, and nothing is cached as pickles
      in the working directory;
    * counts are normalised to a library size estimated from the data (the median), not a fixed
      250, unless ``target_sum`` is given.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Registry of a saved model (used by :meth:`load`).
    n_layers, n_heads, n_hidden, n_latent
        Encoder depth, attention heads, token width and latent size (paper defaults 2/8/128/20).
    pos_encoding
        Spatial positional encoding: ``"cond"`` (GAT on the spatial graph, default), ``"lappe"``
        (Laplacian eigenvectors, random sign flips), ``"signnet"``, ``"rwpe"``, ``"sinusoid"``
        (2-D sinusoid of patch coordinates), ``"sinusoid_coord"`` (of continuous coordinates),
        ``"learnable"`` (100 x 100 patch table), ``"naive"`` (linear in the coordinates) or
        ``"none"``.
    encoder
        ``"transformer"`` (SpaFormer) or ``"gat"`` (SpaGAT, the paper's own baseline).
    likelihood
        ``"mse"`` (MLP decoder on log-normalised values; default) or ``"zinb"`` (counts).
    variational
        VAE latent with a KL term warmed up to ``1e-2`` (default: plain autoencoder).
    cell_mask_rate, gene_mask_rate
        Bi-level masking rates ``theta`` and ``gamma`` (paper default 0.5 / 0.5).
    drop_node_rate
        Fraction of a step's cells dropped at random during training (DropNode; 0 = off).
    loss_on
        ``"masked_entries"`` (paper) or ``"masked_cells"`` (released code).
    n_neighbors
        Neighbours of the spatial k-NN graph used by ``"cond"``, ``"signnet"``, ``"lappe"``,
        ``"rwpe"`` and the GAT encoder.
    dropout, attn_dropout
        Dropout rates (0.2 / 0.1).
    target_sum
        Library size for ``log1p`` normalisation; default the median library size of ``adata``.
    max_cells
        Cap on the cells of one step; larger groups are split into random chunks.
    spatial_scale
        One factor per coordinate axis, multiplied into the coordinates before the spatial
        graph and the positional encodings are computed: for a volume whose z is in other units
        than x and y (section numbers, or anisotropic voxels), e.g. ``(1, 1, 5)`` when one z
        unit is 5 x/y units. Saved with the model. ``None`` (default) uses the coordinates as
        they are, and warns for 3-D coordinates whose z extent is below 1/100 or above 100
        times their x/y extent.

    Notes
    -----
    Coordinates may be 2-D (x, y) or 3-D (x, y, z): with three columns every positional
    encoding works in the volume (the sinusoid and linear encodings over three axes, the
    learnable one with an added z-layer table, the graph encodings on the 3-D neighbour graph),
    and groups are blocks of the volume (:func:`scfound.pp.spatial_tiles`) or sections.

    Examples
    --------
    >>> import scfound as sf
    >>> adata = sf.datasets.osmfish()
    >>> sf.pp.spatial_tiles(adata, n_tiles=8)
    >>> sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="spatial_tile")
    >>> model = sf.SpaFormer(adata)
    >>> model.train(max_epochs=100)
    >>> adata.layers["spaformer_imputed"] = model.get_imputed_expression().to_numpy()

    """

    _module_cls = SpaFormerModule

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_layers: int = 2,
        n_heads: int = 8,
        n_hidden: int = 128,
        n_latent: int = 20,
        pos_encoding: str = "cond",
        encoder: Literal["transformer", "gat"] = "transformer",
        likelihood: Literal["mse", "zinb"] = "mse",
        variational: bool = False,
        cell_mask_rate: float = 0.5,
        gene_mask_rate: float = 0.5,
        drop_node_rate: float = 0.0,
        loss_on: Literal["masked_entries", "masked_cells"] = "masked_entries",
        n_neighbors: int = 12,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        target_sum: float | None = None,
        max_cells: int | None = 4096,
        spatial_scale: Sequence[float] | None = None,
    ):
        super().__init__(adata, registry)
        n_spatial_dims = int(self.summary_stats.get(f"n_{SPATIAL_KEY}", 2))
        spatial_scale = check_spatial_scale(spatial_scale, n_spatial_dims)
        if self.adata is not None and n_spatial_dims == 3 and spatial_scale is None:
            coords = np.asarray(self.adata_manager.get_from_registry(SPATIAL_KEY))
            warn_z_extent(coords, spatial_scale, "SpaFormer")
        if pos_encoding not in POSITIONAL_ENCODINGS:
            raise ValueError(
                f"pos_encoding={pos_encoding!r} is not one of {sorted(POSITIONAL_ENCODINGS)}."
            )
        for name, rate in [("cell_mask_rate", cell_mask_rate), ("gene_mask_rate", gene_mask_rate)]:
            if not 0 < rate < 1:
                raise ValueError(f"{name} must be in (0, 1), got {rate}.")
        if not 0 <= drop_node_rate < 1:
            raise ValueError(f"drop_node_rate must be in [0, 1), got {drop_node_rate}.")
        if target_sum is None:
            if self.adata is None:
                raise ValueError("target_sum is needed to build a SpaFormer without data.")
            target_sum = self._median_library_size()
        if likelihood == "zinb" and self.adata is not None:
            check_expression(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
                "the registered counts",
                integer=True,
            )
        self.max_cells = max_cells
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            target_sum=target_sum,
            n_batch=self.summary_stats.n_batch,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            n_heads=n_heads,
            pos_encoding=pos_encoding,
            encoder=encoder,
            likelihood=likelihood,
            variational=variational,
            cell_mask_rate=cell_mask_rate,
            gene_mask_rate=gene_mask_rate,
            drop_node_rate=drop_node_rate,
            loss_on=loss_on,
            n_neighbors=n_neighbors,
            dropout=dropout,
            attn_dropout=attn_dropout,
            n_spatial_dims=n_spatial_dims,
            spatial_scale=spatial_scale,
        )
        self._model_summary_string = (
            f"SpaFormer: encoder={encoder}, pos_encoding={pos_encoding}, n_layers={n_layers}, "
            f"n_heads={n_heads}, n_hidden={n_hidden}, n_latent={n_latent}, "
            f"likelihood={likelihood}, variational={variational}, "
            f"mask rates={cell_mask_rate}/{gene_mask_rate}, target_sum={target_sum:g}"
            + (f", {n_spatial_dims}-D coordinates" if n_spatial_dims != 2 else "")
            + (f", spatial_scale={spatial_scale}" if spatial_scale is not None else "")
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        spatial_key: str = DEFAULT_SPATIAL_KEY,
        group_key: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData with SpaFormer.

        Parameters
        ----------
        adata
            Cells x genes, counts in ``layer`` (or ``.X``), coordinates in ``obsm[spatial_key]``.
        layer
            Layer with non-negative counts; ``None`` uses ``.X``.
        spatial_key
            Key of the ``(n_obs, 2)`` (x, y) or ``(n_obs, 3)`` (x, y, z) coordinates in
            ``adata.obsm``.
        group_key
            Column of ``adata.obs`` with the field of view / tile of each cell: cells attend to the
            cells of their own group. ``None`` makes the whole section one group (cut into chunks
            of ``max_cells`` cells); use :func:`scfound.pp.spatial_tiles` for sections without
            FOVs.
        batch_key
            Column of ``adata.obs`` with batches (a learned batch token is added to each cell).
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        """
        check_model_data(adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        check_expression(get_matrix(adata, layer), layer_name(layer))
        get_spatial(adata, spatial_key)
        check_obs_keys(adata, group_key=group_key, batch_key=batch_key)
        if group_key is not None:
            check_groups(adata, group_key)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            QuietObsmField(SPATIAL_KEY, spatial_key),
            GroupObsField(GROUP_KEY, group_key),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        register_fields(cls, adata_manager, adata, **kwargs)

    # -------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int = 200,
        *,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        gradient_clip_val: float = 2.0,
        **kwargs,
    ) -> None:
        """Train with scvi-tools' :class:`~scvi.train.TrainingPlan` and Lightning.

        One optimisation step is one group (FOV/tile) of cells. With ``train_size < 1`` whole
        groups are held out for validation, and the masked-entry loss on freshly masked validation
        groups is logged as ``validation_loss`` (used by early stopping). With
        ``variational=True`` the KL weight is warmed up to 1e-2 over the first 10,000 steps.

        Parameters
        ----------
        max_epochs
            Passes over all training groups.
        lr, weight_decay
            AdamW settings (paper: 1e-3 / 5e-4).
        gradient_clip_val
            Gradient-norm clipping (2.0, as the reference code).
        **kwargs
            The other arguments of :meth:`scfound.models.base.GroupModelMixin.train`:
            ``train_size``, ``validation_size``, ``early_stopping``,
            ``early_stopping_patience``, ``accelerator``, ``devices``, ``strategy``, ``seed``,
            ``enable_progress_bar``, ``datasplitter_kwargs``, ``plan_kwargs`` and Lightning
            trainer arguments.

        """
        super().train(
            max_epochs,
            lr=lr,
            weight_decay=weight_decay,
            gradient_clip_val=gradient_clip_val,
            **kwargs,
        )

    def _plan_defaults(self, lr: float, weight_decay: float) -> dict:
        """The shared AdamW, and for the VAE a KL weight warmed up to 1e-2."""
        defaults = super()._plan_defaults(lr, weight_decay)
        if self.module.variational:
            defaults.update(
                n_steps_kl_warmup=10_000,
                n_epochs_kl_warmup=None,
                min_kl_weight=1e-6,
                max_kl_weight=1e-2,
            )
        return defaults

    # ------------------------------------------------------------- inference
    def get_latent_representation(self, adata: AnnData | None = None) -> np.ndarray:
        """Latent embedding ``Z`` of every cell (the mean for the VAE), ``(n_obs, n_latent)``.

        Deterministic: no masking and no dropout at inference.

        Parameters
        ----------
        adata
            AnnData to embed (default: the one the model was set up with). A new one needs the
            model's genes in the model's order (``adata[:, model.adata.var_names]``), and
            non-negative finite counts and finite coordinates, as :meth:`setup_anndata`.

        Raises
        ------
        RuntimeError
            If the model is not trained.
        ValueError
            If ``adata``'s genes differ from the model's (missing and unknown genes are listed),
            or its counts or coordinates hold invalid values. ``adata`` is left unchanged.

        """
        return self._predict(adata, lambda t, inf, gen: inf["qz_m"])

    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        scale: Literal["counts", "log1p"] = "counts",
        keep_observed: bool = False,
    ) -> pd.DataFrame:
        """Imputed (denoised) expression of every cell, ``(n_obs, n_genes)``.

        Parameters
        ----------
        adata
            AnnData to impute (default: the one the model was set up with). A new one needs the
            model's genes in the model's order (``adata[:, model.adata.var_names]``), and
            non-negative finite counts and finite coordinates, as :meth:`setup_anndata`.
        genes
            Genes (``var_names``) to return; default all of them.
        scale
            ``"counts"``: on the count scale of the input layer (each cell keeps its observed
            library size, so the result can stand in for the input in scanpy);
            ``"log1p"``: ``log1p`` of values normalised to ``target_sum`` (over all genes).
        keep_observed
            Keep every non-zero observed count and impute only the zeros (the model cannot tell
            a missing value from a true zero); default replaces every entry with its
            reconstruction (denoising).

        Returns
        -------
        DataFrame of ``float32`` values, cells (``obs_names``) x genes.

        Raises
        ------
        RuntimeError
            If the model is not trained.
        ValueError
            If ``adata``'s genes differ from the model's (missing and unknown genes are listed),
            or its counts or coordinates hold invalid values. ``adata`` is left unchanged.

        """
        check_scale(scale)
        adata_ = self._inference_adata(adata)
        columns = adata_.var_names
        if genes is not None:
            genes = check_genes_present(genes, columns, "adata.var_names")
            columns = pd.Index(genes)
        module = self.module

        def impute(tensors, inf, gen):
            counts = module.predict(gen, inf["library"])
            if keep_observed:
                x = inf["x"]
                counts = torch.where(x > 0, x, counts)
            if scale == "counts":
                return counts
            return log_normalize(counts, module.target_sum)

        values = self._predict(adata_, impute, checked=True)
        if genes is not None:
            values = values[:, adata_.var_names.get_indexer(genes)]
        return pd.DataFrame(values, index=adata_.obs_names.copy(), columns=columns.copy())

    # ----------------------------------------------------------------- utils
    def _check_inference_values(self, adata: AnnData) -> None:
        """The counts, and the coordinates under the registered ``spatial_key``, as at setup."""
        super()._check_inference_values(adata)
        key = self.adata_manager.registry["setup_args"]["spatial_key"]
        coords = get_spatial(adata, key)
        n_dims = self.module.n_spatial_dims
        if coords.shape[1] != n_dims:
            raise ValueError(
                f"adata.obsm[{key!r}] has {coords.shape[1]} columns, but the model was trained "
                f"on {n_dims}-D coordinates ({'x, y, z' if n_dims == 3 else 'x, y'})."
            )

    def _median_library_size(self) -> float:
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        lib = np.asarray(x.sum(1)).ravel()
        lib = lib[lib > 0]
        if lib.size == 0:
            raise ValueError("every cell of the registered counts is empty.")
        return float(np.median(lib))

    def _group_codes(self, manager: AnnDataManager | None = None) -> np.ndarray:
        manager = manager or self.adata_manager
        return np.asarray(manager.get_from_registry(GROUP_KEY)).ravel()

    def _extras(self, manager: AnnDataManager | None = None) -> dict[str, np.ndarray]:
        """Per-cell graph features (LapPE eigenvectors, RWPE) computed group by group."""
        feature = self.module.pos_encoding.features
        if feature is None:
            return {}
        manager = manager or self.adata_manager
        coords = np.asarray(manager.get_from_registry(SPATIAL_KEY), dtype=np.float32)
        codes = self._group_codes(manager)
        n_feat = self.module.pos_encoding.n_features
        out = np.zeros((len(codes), n_feat), dtype=np.float32)
        for code in np.unique(codes):
            cells = np.flatnonzero(codes == code)
            xyz = self.module.scale_coords(torch.from_numpy(coords[cells]))
            edges = knn_graph(xyz, self.module.n_neighbors).numpy()
            out[cells] = GRAPH_FEATURES[feature](edges, len(cells), n_feat)
        return {PE_FEATURES_KEY: out}
