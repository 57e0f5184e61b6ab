"""ScMoFormer: protein prediction with a graph transformer over cells, genes and proteins."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainingPlan, TrainRunner
from sklearn.decomposition import TruncatedSVD

from scfound._constants import TARGET_SUM
from scfound._normalize import log_normalize
from scfound.nn import laplacian_eigenvectors, random_walk_pe

from ..base._mudata import (
    MODALITY_KINDS,
    MuDataSetupMixin,
    get_modality_matrix,
    registered_modalities,
)
from ..base._predictor import ModalityPredictorMixin
from ..base._save import SafeSaveMixin
from ..base._training import adam_plan
from ._graph import MAX_LINKS, encodes_links, prior_graph, table_edges, table_summary
from ._module import PE_TYPES, ScMoFormerModule

logger = logging.getLogger(__name__)

#: query cells of one inference step
INFERENCE_BATCH = 1024
#: reference cells used to fit the initial cell and gene features
MAX_FEATURE_CELLS = 20_000

GraphSpec = str | os.PathLike | pd.DataFrame | Mapping[str, Sequence[str]] | None


class ScMoFormer(ModalityPredictorMixin, MuDataSetupMixin, SafeSaveMixin, BaseModelClass):
    """ScMoFormer: predict surface proteins from RNA with a graph transformer.

    Wen et al. (2023), *Single-cell multimodal prediction via transformers* (CIKM; thesis ch. 3).
    Cells, genes and proteins are the nodes of one heterogeneous graph: cell-gene edges
    weighted by expression (``log1p`` counts per 10,000), gene-protein "encodes" links by
    symbol, and prior graphs among genes and among proteins; there are no cell-protein edges.
    A linear (Performer) transformer attends over the cells of a sub-graph, GraphGPS layers
    (local message passing on the prior graph + global linear attention) over the genes and
    over the proteins, with Laplacian or random-walk positional encodings of the prior graphs,
    and typed SAGE convolutions pass messages across node types
    (:class:`~scfound.models.scmoformer.ScMoFormerModule`). A linear head on the concatenated
    cell states of all layers predicts the CLR of the protein counts (``muon``'s CLR, as
    :class:`~scfound.ScMoGNN`), trained by mean squared error.

    Differences from the authors' code (``OmicsML/scMoFormer``), on purpose:

    * strictly inductive: the SVD of the cell features and the gene features are fitted on the
      reference cells only, and a query cell is predicted in a sub-graph with a fixed set of
      reference cells (the context, as large as a training sub-graph) whose edges and attention
      keys it does not change, so a prediction does not depend on the other query cells (theirs
      fits SVD and gene features on train + test cells and predicts all cells in one graph);
    * gene features are the *mean* of the reference cells' standardised SVD features weighted by
      expression, standardised (theirs: an unnormalised sum, whose scale grows with the cells);
    * prior graphs from files the user passes (STRING-like edge lists with weights, GO gene sets)
      or, by default, from co-expression over the reference cells (RNA for genes, CLR of the
      proteins for proteins; spec section 5); nothing is downloaded;
    * positional encodings of the binarised prior graph; nodes without prior edges get 0;
      Laplacian eigenvector signs are flipped at random in training;
    * mini-batches of cells through scvi-tools' loaders on CPU or GPU, the weights of the best
      validation epoch kept; torch only (no DGL, no ``performer_pytorch``);
    * smaller defaults for CPUs (``n_hidden=64``, 4 heads, 64 initial features; authors: 512,
      8, 128).

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata` (RNA and protein counts of the same cells).
    n_hidden
        Width of every node state.
    n_layers
        Graph-transformer layers (authors: 3).
    n_heads
        Heads of every linear attention.
    n_cell_features
        Components of the truncated SVD that initialises cells (and, through them, genes).
    positional_encoding
        ``"rwpe"`` (random-walk, the authors' default), ``"lappe"`` (Laplacian eigenvectors) or
        ``"none"``.
    n_pe
        Width of the positional encodings (authors: 10).
    gene_graph
        Prior graph among genes: ``"auto"`` (each gene's ``max_neighbors`` most co-expressed
        genes, cosine > ``graph_threshold``), ``None``, a GMT file or dict of gene sets (pairs
        within a set, weighted by co-expression), or an edge list (a ``.tsv``/``.csv`` path or a
        DataFrame: two columns of names, an optional third of non-negative weights).
    protein_graph
        Prior graph among proteins, as ``gene_graph``; ``"auto"`` uses the CLR proteins of the
        reference cells. For BMMC CITE-seq: the STRING file
        ``gene_pairs/string_v11.5_bmmc_adt_ppi.tsv``.
    protein_symbols
        ``{protein: gene symbol or symbols}`` for the encodes links, overriding the built-in
        aliases of :data:`~scfound.models.scmoformer._graph.PROTEIN_ALIASES`.
    max_neighbors
        Neighbours kept per node in each prior graph (the heaviest edges).
    graph_threshold
        Co-expression pairs with cosine at or below it are dropped.
    dropout, attn_dropout, edge_dropout
        Dropout of node states, of attention outputs and of cell-gene edge weights (authors:
        0.5, 0.1, 0.5).
    cell_attention
        Use the cell transformer (``False``: the ablation without it).

    Examples
    --------
    >>> sf.ScMoFormer.setup_mudata(
    ...     mdata,
    ...     rna_layer="counts",
    ...     protein_layer="counts",
    ...     modalities={"rna_layer": "rna", "protein_layer": "adt"},
    ... )
    >>> model = sf.ScMoFormer(mdata)
    >>> model.train()
    >>> proteins = model.predict(query_rna, layer="counts")
    """

    _module_cls = ScMoFormerModule
    _data_splitter_cls = DataSplitter
    _training_plan_cls = TrainingPlan
    _train_runner_cls = TrainRunner
    _required_modalities = ("rna", "protein")
    _saved_attrs = ("n_context_",)

    #: source and target kinds (ScMoFormer predicts proteins from RNA only)
    source, target = "rna", "protein"

    def __init__(
        self,
        mdata: MuData,
        n_hidden: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        n_cell_features: int = 64,
        positional_encoding: str = "rwpe",
        n_pe: int = 10,
        gene_graph: GraphSpec = "auto",
        protein_graph: GraphSpec = "auto",
        protein_symbols: Mapping[str, str | Sequence[str]] | None = None,
        max_neighbors: int = 16,
        graph_threshold: float = 0.1,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        edge_dropout: float = 0.2,
        cell_attention: bool = True,
    ):
        super().__init__(mdata)
        if positional_encoding not in PE_TYPES:
            raise ValueError(
                f"positional_encoding must be one of {list(PE_TYPES)}, got {positional_encoding!r}."
            )
        for name, value in (("max_neighbors", max_neighbors), ("n_pe", n_pe)):
            if not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        # paths are stored as text with the init parameters (saved as JSON)
        if isinstance(gene_graph, os.PathLike):
            gene_graph = os.fspath(gene_graph)
        if isinstance(protein_graph, os.PathLike):
            protein_graph = os.fspath(protein_graph)
        mods = registered_modalities(self.adata_manager)
        self.source_mod, self.target_mod = mods["rna"], mods["protein"]
        X = sp.csr_matrix(get_modality_matrix(self.adata_manager, "rna"), dtype=np.float32)
        Y = get_modality_matrix(self.adata_manager, "protein", dense=True)
        genes = self.adata.mod[self.source_mod].var_names
        proteins = self.adata.mod[self.target_mod].var_names
        values = log_normalize(X, TARGET_SUM)
        n_svd = min(max(int(n_cell_features), 1), min(X.shape) - 1)

        gene_index, gene_weight, gene_what = prior_graph(
            gene_graph, genes, values, max_neighbors, graph_threshold, "gene_graph"
        )
        with torch.inference_mode():
            clr = self._normalize_target(Y)
        protein_index, protein_weight, protein_what = prior_graph(
            protein_graph, proteins, clr, max_neighbors, graph_threshold, "protein_graph"
        )
        link_index, link_weight, unmatched = encodes_links(proteins, genes, protein_symbols)
        if len(unmatched) == len(proteins):
            raise ValueError(
                f"none of the {len(proteins)} proteins (e.g. {list(proteins[:3])}) matches a gene "
                f"symbol among the {len(genes)} genes (e.g. {list(genes[:3])}): the gene-protein "
                "'encodes' links need gene symbols as RNA var_names, or pass protein_symbols="
                "{protein: gene symbol}."
            )
        if unmatched:
            warnings.warn(
                f"{len(unmatched)} of the {len(proteins)} proteins have no encoding gene among "
                f"the RNA features (e.g. {unmatched[:5]}); they get no gene-protein link (pass "
                "protein_symbols= to add links).",
                UserWarning,
                stacklevel=2,
            )

        self.module = self._module_cls(
            n_genes=X.shape[1],
            n_proteins=len(proteins),
            gene_key=MODALITY_KINDS["rna"].registry_key,
            protein_key=MODALITY_KINDS["protein"].registry_key,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_cell_features=n_svd,
            pe=positional_encoding,
            n_pe=n_pe,
            gene_neighbors=gene_index.shape[1],
            protein_neighbors=protein_index.shape[1],
            n_links=MAX_LINKS,
            dropout=dropout,
            attn_dropout=attn_dropout,
            edge_dropout=edge_dropout,
            cell_attention=cell_attention,
        )
        module = self.module
        for name, array in (
            ("gene_index", gene_index),
            ("gene_weight", gene_weight),
            ("protein_index", protein_index),
            ("protein_weight", protein_weight),
            ("link_index", link_index),
            ("link_weight", link_weight),
        ):
            getattr(module, name).copy_(torch.as_tensor(array))
        if positional_encoding != "none":
            module.gene_pe.copy_(_positional(gene_index, gene_weight, positional_encoding, n_pe))
            module.protein_pe.copy_(
                _positional(protein_index, protein_weight, positional_encoding, n_pe)
            )
        self._fit_node_features(values)
        #: number of reference cells a query sub-graph holds (set by :meth:`train`)
        self.n_context_ = 512
        #: the prior graphs and links: what they were built from, edges, linked nodes
        self.graphs_ = {
            "gene_graph": {"source": gene_what, **table_summary(gene_index, gene_weight)},
            "protein_graph": {
                "source": protein_what,
                **table_summary(protein_index, protein_weight),
            },
            "encodes_links": {
                "n_links": int((link_weight > 0).sum()),
                "unmatched_proteins": unmatched,
            },
        }
        self._model_summary_string = (
            f"ScMoFormer: rna ({X.shape[1]} genes) -> protein ({len(proteins)}), "
            f"n_hidden={n_hidden}, n_layers={n_layers}, PE: {positional_encoding}, gene graph: "
            f"{gene_what}, protein graph: {protein_what}, "
            f"{self.graphs_['encodes_links']['n_links']} gene-protein links"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        batch_key: str | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register the paired RNA and protein counts of ``mdata`` (as scvi-tools' TOTALVI).

        Only scvi-tools' registry entries are added to ``mdata``; the ``tl`` verbs set up a copy
        that shares the counts instead.

        Parameters
        ----------
        mdata
            Paired cells: both modalities hold the same cells in the order of
            ``mdata.obs_names``.
        rna_layer, protein_layer
            Layer with raw counts of each modality (``None``: its ``.X``).
        batch_key
            Column of ``obs`` with batches (recorded, not used).
        modalities
            Maps the arguments above to modality names, e.g. ``{"rna_layer": "rna",
            "protein_layer": "adt"}``; both layers must be mapped.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        Raises
        ------
        KeyError
            If a modality, layer or ``obs`` column is missing (the error lists what there is).
        ValueError
            If a modality is not mapped, the cells are not paired across modalities, or counts
            are negative or not finite.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        cls._register_mudata(
            mdata, setup_method_args, modalities, protein_batch_mask=False, **kwargs
        )

    # ------------------------------------------------------------------ features
    def _normalize_target(self, Y: np.ndarray) -> np.ndarray:
        from ..scmognn._module import normalize_counts

        return normalize_counts(torch.as_tensor(Y, dtype=torch.float32), "clr").numpy()

    @torch.inference_mode()
    def _fit_node_features(self, values: sp.csr_matrix) -> None:
        """Cell SVD loadings and gene features from the normalised RNA of the reference cells.

        Cells: the top components of a truncated SVD, standardised. Genes: the expression-
        weighted mean of the cells' standardised features, standardised over genes.
        """
        module = self.module
        rows = np.arange(values.shape[0])
        if len(rows) > MAX_FEATURE_CELLS:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(rows, MAX_FEATURE_CELLS, replace=False))
        sub = values[rows]
        svd = TruncatedSVD(module.cell_feature_loadings.shape[1], random_state=0).fit(sub)
        loadings = svd.components_.T.astype(np.float32)
        proj = np.asarray(sub @ loadings)
        mean, std = proj.mean(0), np.maximum(proj.std(0), 1e-8)
        cells = (proj - mean) / std
        mass = np.asarray(sub.sum(0)).ravel()
        genes = np.asarray(sub.T @ cells) / np.maximum(mass, 1e-8)[:, None]
        genes = (genes - genes.mean(0)) / np.maximum(genes.std(0), 1e-8)
        module.cell_feature_loadings.copy_(torch.as_tensor(loadings))
        module.cell_feature_mean.copy_(torch.as_tensor(mean))
        module.cell_feature_scale.copy_(torch.as_tensor(1.0 / std))
        module.gene_init.copy_(torch.as_tensor(genes, dtype=torch.float32))

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 200,
        *,
        lr: float = 3e-3,
        weight_decay: float = 1e-6,
        batch_size: int = 512,
        train_size: float = 0.85,
        early_stopping: bool = True,
        early_stopping_patience: int = 20,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        seed: int = 0,
        enable_progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train on cell sub-graphs: each step is ``batch_size`` cells with all genes and proteins.

        With ``train_size < 1`` the rest of the cells is held out: its ``validation_loss`` (MSE
        on the CLR proteins) drives early stopping and a learning-rate decay (x0.9 after 10
        epochs without improvement, the authors' ReduceLROnPlateau), and the weights of the best
        epoch are kept.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        lr, weight_decay
            AdamW settings (authors: 1e-3 at width 512, 1e-6; 3e-3 suits the narrower default
            here, see the docs).
        batch_size
            Cells per sub-graph (authors: 3,000 or 10,000 on a GPU); it is also the number of
            reference cells in each query sub-graph at prediction.
        train_size
            Fraction of cells to train on (authors: 0.85); the rest validates.
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for this many epochs.
        accelerator, devices
            Passed to Lightning.
        seed
            Seed of the split, the batches, dropout and the initial weights of a new run.
        enable_progress_bar
            Default :attr:`scfound.settings.progress_bar`.
        plan_kwargs
            Extra arguments of :class:`~scvi.train.TrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer`.
        """
        keys = {self.module.gene_key: np.float32, self.module.protein_key: np.float32}
        n_train = self._train_on_split(
            keys,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            seed=seed,
            plan_kwargs=adam_plan(lr, weight_decay) | (plan_kwargs or {}),
            validation_plan_kwargs={
                "reduce_lr_on_plateau": True,
                "lr_factor": 0.9,
                "lr_patience": 10,
                "lr_scheduler_metric": "reconstruction_loss_validation",
            },
            enable_progress_bar=enable_progress_bar,
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )
        self.n_context_ = int(min(batch_size, n_train))

    # ------------------------------------------------------------------ inference
    def _context(self) -> np.ndarray:
        """Gene counts of the fixed reference cells that every query sub-graph holds."""
        X = sp.csr_matrix(get_modality_matrix(self.adata_manager, "rna"), dtype=np.float32)
        n = min(int(self.n_context_), X.shape[0])
        rows = np.sort(np.random.default_rng(0).choice(X.shape[0], n, replace=False))
        return X[rows].toarray()

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | MuData | None = None,
        *,
        layer: str | None = None,
        batch_size: int = INFERENCE_BATCH,
    ) -> pd.DataFrame:
        """Predicted proteins (CLR scale) of every cell of ``adata`` from its RNA counts.

        Each batch of query cells is predicted in one sub-graph with the model's fixed context
        of reference cells (``n_context_``, the training sub-graph size); query cells read the
        genes and attend to the context cells but send nothing to either, so a cell's prediction
        does not depend on the other query cells.

        Parameters
        ----------
        adata
            Cells with RNA counts: an AnnData, or a MuData holding the RNA modality under the
            name the model was set up with. Genes are matched by name; missing ones are read as
            0 (with a warning). ``None``: the registered cells.
        layer
            Layer of ``adata`` with raw counts (``None``: ``.X``).
        batch_size
            Query cells per sub-graph.

        Returns
        -------
        Cells x proteins DataFrame (index: cells, columns: protein names), CLR of the protein
        counts, clipped at 0 (the CLR scale is non-negative).

        Raises
        ------
        ValueError
            If ``adata`` shares no gene with the model, or its counts are negative or not finite.
        """
        self._check_if_trained(warn=True)
        X = self._source_counts(adata, layer)
        module = self.module
        module.eval()
        context = torch.as_tensor(self._context(), device=module.device)
        n_ctx = context.shape[0]
        preds = []
        for start in range(0, X.shape[0], batch_size):
            x = torch.as_tensor(X[start : start + batch_size].toarray(), device=module.device)
            query = torch.zeros(n_ctx + x.shape[0], dtype=torch.bool, device=module.device)
            query[n_ctx:] = True
            out = module.inference(torch.cat([context, x]), query=query)["prediction"]
            preds.append(out[n_ctx:].clamp_min(0).cpu().numpy())
        return pd.DataFrame(
            np.concatenate(preds), index=self._obs_names(adata), columns=self.target_names
        )


def _positional(index: np.ndarray, weight: np.ndarray, kind: str, k: int) -> torch.Tensor:
    """LapPE or RWPE of a padded neighbour table; nodes without edges get 0."""
    n = index.shape[0]
    edges = table_edges(index, weight)
    if kind == "lappe":
        pe = laplacian_eigenvectors(edges, n, k)
    else:
        pe = random_walk_pe(edges, n, k)
    isolated = ~np.isin(np.arange(n), edges)
    pe[isolated] = 0.0
    return torch.as_tensor(pe, dtype=torch.float32)
