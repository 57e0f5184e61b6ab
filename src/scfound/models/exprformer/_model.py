"""ExpressionTransformer: gene tokens pre-trained on expression (Cao 2023, thesis ch. 4)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField
from scvi.model.base import BaseModelClass

from scfound._utils import check_expression, check_scale, get_matrix, layer_name
from scfound.data import CELL_INDEX_KEY, GroupDataSplitter

from ..base import GroupModelMixin, SafeSaveMixin, check_model_data, register_fields
from ..base._training import adam_plan
from ..base._vocabulary import gene_table
from ..cellplm._model import map_genes
from ._module import ExpressionTransformerModule

#: architecture presets: the thesis's size, and one that pre-trains on a CPU in minutes
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"n_hidden": 200, "n_layers": 12, "n_heads": 4},
    "small": {"n_hidden": 64, "n_layers": 2, "n_heads": 4},
}

#: ratio of the longest to the shortest cell of a length bucket (padding waste below 25 %)
BUCKET_RATIO = 1.25

#: name of the plain-text vocabulary file written next to the model by :meth:`save`
VOCABULARY_FILE = "vocabulary.txt"

#: rows read at a time when the registered matrix is scanned
_BLOCK = 10_000


class CellDataSplitter(GroupDataSplitter):
    """:class:`~scfound.data.GroupDataSplitter` with a random split of cells, not of groups.

    The groups are length buckets (cells with a similar number of non-zero genes), so one step
    pads its cells to a similar length; validation cells are drawn at random from all lengths.
    Arguments as :class:`~scfound.data.GroupDataSplitter`.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        group_codes: np.ndarray,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(
            adata_manager,
            group_codes,
            train_size=train_size,
            validation_size=validation_size,
            seed=seed,
            **kwargs,
        )
        train_size = 0.9 if train_size is None else train_size
        validation_size = 1 - train_size if validation_size is None else validation_size
        n = len(self.group_codes)
        perm = np.random.default_rng(seed).permutation(n)
        n_train = min(max(round(train_size * n), 1), n)
        n_val = min(round(validation_size * n), n - n_train)
        self.train_idx = np.sort(perm[:n_train])
        self.val_idx = np.sort(perm[n_train : n_train + n_val])
        self.test_idx = np.sort(perm[n_train + n_val :])
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)


def _gene_names(adata: AnnData, gene_key: str | None) -> list[str]:
    """``var_names`` or ``var[gene_key]`` as strings (a missing column is a ``KeyError``)."""
    if gene_key is None:
        return adata.var_names.astype(str).tolist()
    if gene_key not in adata.var:
        raise KeyError(
            f"gene_key={gene_key!r} not found in adata.var (columns: {list(adata.var.columns)})."
        )
    return adata.var[gene_key].astype(str).tolist()


def nonzero_per_cell(X, columns: np.ndarray | None = None) -> np.ndarray:
    """Non-zero entries of each row of ``X`` (in memory or backed), among ``columns``."""
    out = []
    for start in range(0, X.shape[0], _BLOCK):
        block = sp.csr_matrix(X[start : start + _BLOCK])
        if columns is not None:
            block = block[:, columns]
        out.append(np.asarray((block > 0).sum(1)).ravel())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class ExpressionTransformer(GroupModelMixin, SafeSaveMixin, BaseModelClass):
    """Expression Transformer: a gene-token transformer pre-trained by masked value regression.

    Cao (2023), *Deep Representation Learning for Single-cell Sequencing Data Analysis*, PhD
    thesis, UC Irvine, ch. 4 ("Expresser"). A cell is the set of its non-zero genes. Each gene is
    a learned token (no gene-name or sequence prior); expression is log-normalised (1e4, log1p)
    and binned per cell into ``n_bins`` bins relative to the cell's maximum. An encoder (pre-LN
    transformer layers, no positional encoding, torch's ``scaled_dot_product_attention`` with a
    key-padding mask) contextualises the gene tokens; the Expression Decoder, a cross-attention
    layer, lets a random ``mask_rate`` of each cell's genes query the observed ones and mixes the
    observed genes' expression-bin embeddings; an MLP on ``[decoder output; cell maximum]`` with
    a softplus predicts the masked values, trained with squared error on the masked non-zero
    values only. After pre-training the gene-token table holds the gene embeddings
    (:meth:`get_gene_embeddings`).

    Choices the thesis leaves open (the spec's part C.8): the encoder sees gene identities
    only and values enter through the decoder (§4.2.2); mask rate 0.3 (at least one gene, at
    most all but one); feed-forward width ``4 d``, GELU, dropout 0.1; one decoder layer with
    ``n_heads`` heads; head ``Linear(d + 1, d) - GELU - Linear(d, 1)``; bin ``min(floor(x k /
    L), k - 1)``; cells with more than ``max_tokens`` genes keep a random subset in training and
    their most expressed genes at inference. No public code exists.

    Batches are length-bucketed: cells with a similar number of non-zero genes (within a factor
    :data:`BUCKET_RATIO`) form the steps, and a step is padded to its longest cell only, not to
    ``max_tokens``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (a corpus of several datasets from
        :func:`scfound.pp.build_corpus` works: each cell contributes its non-zero genes only).
    registry
        Registry of a saved model (used by :meth:`load`).
    vocabulary
        Gene vocabulary; default the genes of ``adata`` (``var_names`` or ``var[gene_key]``).
    drop_unknown_genes
        Ignore genes of ``adata`` that are not in ``vocabulary`` instead of raising.
    preset
        ``"small"`` (64 wide, 2 layers, 4 heads; CPU) or ``"paper"`` (200 wide, 12 layers, 4
        heads); ``n_hidden``, ``n_layers`` and ``n_heads`` override it.
    n_hidden, n_layers, n_heads
        Token width, encoder layers and attention heads.
    n_bins
        Expression bins per cell (paper: 50).
    mask_rate
        Fraction of each cell's genes masked in training (0.3).
    max_tokens
        Genes per cell (paper: 1100).
    dropout
        Dropout after the attention blocks and in the feed-forward blocks (0.1).
    attn_dropout
        Dropout of the attention weights (0: torch's fused attention kernels then run on a
        CPU too; with dropout a CPU falls back to the unfused path, about 3 times slower per
        step of the small preset).
    decoder
        ``"cross_attention"`` (the paper) or ``"encoder"`` (the thesis's "w/o Decoder"
        ablation: a standard encoder layer over gene tokens plus expression tokens, a mask
        token for the masked genes).
    target_sum
        Library size of the log-normalisation (1e4).
    length_buckets
        Batch cells of similar length together (``False``: any lengths in a step, padded to the
        longest; the padded baseline of the speed benchmark).
    batch_size
        Cells per training step (the thesis's recommendation: 128).

    Examples
    --------
    >>> import scfound as sf
    >>> corpus = sf.pp.build_corpus({"a": adata_a, "b": adata_b}, layer="counts")
    >>> sf.ExpressionTransformer.setup_anndata(corpus)
    >>> model = sf.ExpressionTransformer(corpus, preset="small")
    >>> model.train(max_epochs=20)
    >>> genes = model.get_gene_embeddings()  # genes x d DataFrame
    """

    _module_cls = ExpressionTransformerModule
    _data_splitter_cls = CellDataSplitter
    #: a model carried over from a trained one (:meth:`from_model`) stays usable after load
    _saved_attrs = ("pretrained_",)

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        vocabulary: Sequence[str] | None = None,
        drop_unknown_genes: bool = False,
        preset: Literal["small", "paper"] = "small",
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        n_bins: int = 50,
        mask_rate: float = 0.3,
        max_tokens: int = 1100,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        decoder: Literal["cross_attention", "encoder"] = "cross_attention",
        target_sum: float = 1e4,
        length_buckets: bool = True,
        batch_size: int = 128,
    ):
        super().__init__(adata, registry)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}.")
        if not 0 < mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}.")
        for name, value in [
            ("n_bins", n_bins),
            ("max_tokens", max_tokens),
            ("batch_size", batch_size),
        ]:
            if int(value) != value or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
        sizes = {**PRESETS[preset]}
        for name, value in [("n_hidden", n_hidden), ("n_layers", n_layers), ("n_heads", n_heads)]:
            if value is not None:
                sizes[name] = int(value)
        gene_key = self.adata_manager.registry["setup_args"].get("gene_key")
        genes = _gene_names(self.adata, gene_key)
        vocabulary = list(genes) if vocabulary is None else [str(g) for g in vocabulary]
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has duplicated genes; make them unique.")
        input_genes = map_genes(genes, vocabulary, drop_unknown_genes)
        self.vocabulary = vocabulary
        self.length_buckets = bool(length_buckets)
        self.max_cells = int(batch_size)
        self._codes_cache: np.ndarray | None = None
        self.pretrained_ = False
        self.module = self._module_cls(
            n_vocab=len(vocabulary),
            input_genes=torch.from_numpy(input_genes),
            n_bins=n_bins,
            dropout=dropout,
            attn_dropout=attn_dropout,
            decoder=decoder,
            mask_rate=mask_rate,
            max_tokens=max_tokens,
            target_sum=target_sum,
            **sizes,
        )
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"ExpressionTransformer: {len(vocabulary)} genes in the vocabulary "
            f"({int((input_genes >= 0).sum())} in the data), n_hidden={sizes['n_hidden']}, "
            f"n_layers={sizes['n_layers']}, n_heads={sizes['n_heads']}, n_bins={n_bins}, "
            f"decoder={decoder!r}, {n_params / 1e6:.2f}M parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = "counts",
        gene_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData (or a corpus of datasets, see :func:`scfound.pp.build_corpus`).

        Nothing is written into ``adata`` beyond scvi-tools' registry entries, and nothing at
        all when a check fails.

        Parameters
        ----------
        adata
            Cells x genes with raw counts; may be backed (``anndata.read_h5ad(path, "r")``).
        layer
            Layer with non-negative counts (default ``"counts"``); ``None`` uses ``.X``.
        gene_key
            Column of ``adata.var`` with the gene identifiers of the vocabulary (default
            ``var_names``); objects with other identifiers are matched through it.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        Raises
        ------
        KeyError
            ``layer`` or ``gene_key`` is missing.
        ValueError
            NaN, infinite or negative values; duplicated gene identifiers; cells without any
            non-zero value (they have no tokens: filter them with
            ``sc.pp.filter_cells(adata, min_genes=1)``).
        """
        check_model_data(adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        X = get_matrix(adata, layer)
        check_expression(X, layer_name(layer))
        genes = pd.Index(_gene_names(adata, gene_key))
        if genes.has_duplicates:
            dup = genes[genes.duplicated()].unique().tolist()
            where = "adata.var_names" if gene_key is None else f"adata.var[{gene_key!r}]"
            raise ValueError(f"{where} has duplicated genes {dup[:5]}; make them unique.")
        if "source_registry" not in kwargs:
            empty = nonzero_per_cell(X) == 0
            if empty.any():
                raise ValueError(
                    f"{int(empty.sum())} cells of {layer_name(layer)} have no non-zero value "
                    f"(e.g. {adata.obs_names[empty][:3].tolist()}); the Expression Transformer "
                    "reads a cell's non-zero genes, so these have no tokens. Remove them, e.g. "
                    "sc.pp.filter_cells(adata, min_genes=1)."
                )
        anndata_fields = [LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False)]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        register_fields(cls, adata_manager, adata, **kwargs)

    @classmethod
    def from_model(
        cls,
        model: ExpressionTransformer,
        adata: AnnData,
        *,
        drop_unknown_genes: bool = True,
        **overrides,
    ) -> ExpressionTransformer:
        """Carry a trained model over to ``adata`` (any gene panel; zero-shot or fine-tuning).

        The new model shares the vocabulary and a copy of the weights; genes of ``adata`` that
        the vocabulary lacks are ignored (counted in a log message) unless
        ``drop_unknown_genes=False``.

        Parameters
        ----------
        model
            A trained (or loaded) model.
        adata
            New data registered with :meth:`setup_anndata` (``gene_key`` names its column
            of the vocabulary's identifiers).
        drop_unknown_genes
            Ignore genes outside the vocabulary (all unknown is an error either way).
        **overrides
            Settings to change (e.g. ``mask_rate``, ``batch_size``).
        """
        if not isinstance(model, ExpressionTransformer):
            raise TypeError(f"model must be an ExpressionTransformer, not {type(model).__name__}.")
        params = dict(model.init_params_["non_kwargs"])
        params.pop("vocabulary", None)
        params["drop_unknown_genes"] = drop_unknown_genes
        params.update(overrides)
        new = cls(adata, vocabulary=model.vocabulary, **params)
        new.module.load_state_dict(
            {k: v for k, v in model.module.state_dict().items() if k != "input_genes"},
            strict=False,
        )
        new.pretrained_ = bool(model.is_trained_ or getattr(model, "pretrained_", False))
        return new

    # --------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int = 20,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        batch_size: int | None = None,
        plan_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        """Pre-train (or fine-tune) with scvi-tools' TrainingPlan and TrainRunner.

        A step is a chunk of at most ``batch_size`` cells of one length bucket; ``train_size
        < 1`` holds out random cells, whose masked squared error is logged as
        ``validation_loss``. ``accelerator``, ``devices`` and ``strategy`` (``"ddp"``: the
        steps of an epoch are sharded across processes) pass to Lightning, and a backed
        AnnData streams from disk.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        lr, weight_decay
            Adam settings (thesis: Adam, 1e-4); ``eps`` is 1e-8 (``plan_kwargs`` may change it).
        batch_size
            Cells per step (default the model's ``batch_size``).
        plan_kwargs
            Extra arguments of :class:`~scvi.train.TrainingPlan` (e.g. ``n_steps_kl_warmup``
            has no effect; ``reduce_lr_on_plateau``).
        **kwargs
            The other arguments of :meth:`scfound.models.base.GroupModelMixin.train`
            (``train_size``, ``validation_size``, ``early_stopping``, ``gradient_clip_val``,
            ``accelerator``, ``devices``, ``strategy``, ``seed``, ``enable_progress_bar``,
            ``datasplitter_kwargs``) and Lightning trainer arguments (``precision="bf16-mixed"``
            on a GPU).
        """
        if batch_size is not None:
            if int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
            self.max_cells = int(batch_size)
        kwargs.setdefault("gradient_clip_val", 1.0)
        super().train(
            max_epochs, lr=lr, weight_decay=weight_decay, plan_kwargs=plan_kwargs, **kwargs
        )

    def _plan_defaults(self, lr: float, weight_decay: float) -> dict:
        """The shared defaults (``eps=1e-8``) with Adam, as the thesis."""
        return adam_plan(lr, weight_decay, optimizer="Adam")

    # ------------------------------------------------------------------ hooks
    def _group_codes(self, manager: AnnDataManager | None = None) -> np.ndarray:
        """Length bucket of every cell: ``floor(log(n_tokens) / log(BUCKET_RATIO))``."""
        manager = manager or self.adata_manager
        if not self.length_buckets:
            return np.zeros(manager.adata.n_obs, dtype=np.int64)
        own = manager is self.adata_manager
        if own and self._codes_cache is not None:
            return self._codes_cache
        columns = np.flatnonzero(self.module.input_genes.cpu().numpy() >= 0)
        n = nonzero_per_cell(manager.get_from_registry(REGISTRY_KEYS.X_KEY), columns)
        n = np.clip(n, 1, self.module.max_tokens)
        codes = np.floor(np.log(n) / math.log(BUCKET_RATIO)).astype(np.int64)
        if own:
            self._codes_cache = codes
        return codes

    def _inference_max_cells(self) -> int | None:
        return self.max_cells

    def _has_weights(self) -> bool:
        return bool(self.is_trained_ or getattr(self, "pretrained_", False))

    def _group_forward(self, tensors: dict[str, torch.Tensor], decode: bool) -> tuple:
        """Nothing: every ``fn`` of this model runs the module itself."""
        return ()

    def _x(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return tensors[REGISTRY_KEYS.X_KEY].to(self.device).float()

    # -------------------------------------------------------------- inference
    def get_latent_representation(self, adata: AnnData | None = None) -> np.ndarray:
        """Cell embeddings, ``(n_obs, n_hidden)``: the mean contextual embedding of its genes.

        Parameters
        ----------
        adata
            Data registered with :meth:`setup_anndata` (default: the model's), with the model's
            genes in the model's order; another gene panel is carried over with
            :meth:`from_model`.
        """
        module = self.module
        return self._predict(
            adata, lambda t: module.inference(self._x(t), mask=False)["z"], decode=False
        )

    def get_gene_embeddings(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """The gene-token table: genes x ``n_hidden`` (the thesis's semantic gene embeddings).

        Parameters
        ----------
        genes
            Genes to return, in this order (default the whole vocabulary). Genes the
            vocabulary lacks get NaN rows and a warning with their count; none known is an
            error.

        Returns
        -------
        DataFrame of ``float32`` values indexed by gene.
        """
        return gene_table(self.module.gene_embedding.weight, self.vocabulary, genes)

    def get_denoised_expression(
        self,
        adata: AnnData | None = None,
        *,
        query: np.ndarray | sp.spmatrix | None = None,
        n_folds: int = 4,
        scale: Literal["log1p", "counts"] = "log1p",
    ) -> np.ndarray:
        """Each cell's non-zero values predicted from its other genes, ``(n_obs, n_vars)``.

        Every non-zero gene is predicted as a masked gene from the others (the cell's genes in
        ``n_folds`` interleaved folds, one masked at a time). With ``query``, the entries it
        marks are predicted instead, as masked genes joining the cell's tokens: the thesis's
        imputation of dropped values (e.g. the ``True`` entries of the mask that
        :func:`scfound.pp.mask_entries` writes). Other entries, and genes outside the
        vocabulary, are NaN.

        Parameters
        ----------
        adata
            Data registered with :meth:`setup_anndata` (default: the model's).
        query
            Boolean cells x genes matrix of entries to predict.
        n_folds
            Folds of the leave-out prediction without ``query``.
        scale
            ``"log1p"`` (log-normalised to ``target_sum``, the model's space) or ``"counts"``
            (rescaled to each cell's observed library size).
        """
        check_scale(scale)
        if int(n_folds) != n_folds or n_folds < 2:
            raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
        adata_ = self._inference_adata(adata)
        module = self.module
        extras = {}
        if query is not None:
            if query.shape != adata_.shape:
                raise ValueError(
                    f"query must have adata's shape {adata_.shape}, got {query.shape}."
                )
            extras["query"] = (
                query.astype(bool).toarray() if sp.issparse(query) else np.asarray(query, bool)
            )

        def denoise(tensors):
            x = self._x(tensors)
            if query is not None:
                rows = tensors[CELL_INDEX_KEY].numpy()
                q = torch.from_numpy(extras["query"][rows]).to(x.device)
                values = module.predict_query(x, q)
            else:
                values = module.predict_held_out(x, n_folds)
            if scale == "counts":
                known = module.input_genes >= 0
                library = (x * known).sum(1, keepdim=True)
                values = torch.expm1(values) / module.target_sum * library
            return values

        return self._predict(adata_, denoise, decode=False, checked=True)

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save the model (see :meth:`scfound.models.base.SafeSaveMixin.save`) and its vocabulary.

        The vocabulary is also written as ``vocabulary.txt``, one gene per line, in the order
        of the rows of :meth:`get_gene_embeddings`.
        """
        super().save(dir_path, overwrite=overwrite, save_anndata=save_anndata)
        path = os.path.join(os.fspath(dir_path), VOCABULARY_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write("\n".join(self.vocabulary) + "\n")
        os.replace(path + ".tmp", path)
