"""CellPLM: a pre-trained cell language model (cells are tokens, tissues are sentences)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
)
from scvi.model.base import BaseModelClass

from scfound._constants import DATASET_KEY, MEASURED_KEY, SPATIAL_KEY
from scfound._utils import (
    check_expression,
    check_genes_present,
    check_groups,
    check_scale,
    get_matrix,
    layer_name,
    record_group_key,
    resolve_group_key,
)
from scfound._validate import check_obs_keys

from ..base import (
    GroupModelMixin,
    QuietObsmField,
    SafeSaveMixin,
    check_model_data,
    register_fields,
)
from ..base._vocabulary import gene_table
from ._module import PERTURBED_KEY, CellPLMModule

logger = logging.getLogger(__name__)

#: cells of one sample encoded together at inference (larger samples are cut in strided chunks)
INFERENCE_MAX_CELLS = 50_000
#: weight of the Gaussian-mixture KL after warm-up. With weight 1 (the plain ELBO) pre-training
#: on a 12k-cell corpus left 1-2 nats of KL per cell and a near-useless zero-shot embedding
#: (Leiden ARI 0.06 / 0.32 on unseen MoP samples, squared error / NB); at 0.01 the ARI was
#: 0.24 / 0.57 (``benchmarks/results/cellplm_kl.md``). The authors' code avoids the collapse with
#: a free-bits floor; their SpaFormer code ramps the KL weight to 0.01, as here.
KL_WEIGHT = 0.01


def map_genes(
    genes: Sequence[str], vocabulary: Sequence[str], drop_unknown_genes: bool = False
) -> np.ndarray:
    """Vocabulary index of each gene (``-1`` for genes dropped as unknown).

    Raises
    ------
    ValueError
        If a gene is not in the vocabulary (unless ``drop_unknown_genes``), or none is.

    """
    lookup = {g: i for i, g in enumerate(vocabulary)}
    index = np.array([lookup.get(str(g), -1) for g in genes], dtype=np.int64)
    unknown = [str(g) for g, i in zip(genes, index, strict=True) if i < 0]
    if len(unknown) == len(genes):
        raise ValueError(
            f"none of the {len(genes)} genes is in the model's vocabulary of {len(vocabulary)} "
            f"genes (data: {list(genes[:3])}, vocabulary: {list(vocabulary[:3])}); pass "
            "`gene_key=` naming an adata.var column with the vocabulary's identifiers."
        )
    if unknown and not drop_unknown_genes:
        raise ValueError(
            f"{len(unknown)} of {len(genes)} genes are not in the model's vocabulary "
            f"(e.g. {unknown[:10]}); pass drop_unknown_genes=True to ignore them."
        )
    if unknown:
        logger.warning(
            "%d of %d genes are not in the vocabulary and are ignored (e.g. %s).",
            len(unknown),
            len(genes),
            unknown[:10],
        )
    return index


class CellPLM(GroupModelMixin, SafeSaveMixin, BaseModelClass):
    """CellPLM: single-cell pre-trained language model with cells as tokens.

    Wen et al. (2024), *CellPLM: Pre-training of Cell Language Model Beyond Single Cells* (ICLR).
    A tissue sample (scRNA-seq) or field of view (spatial) is a sentence whose tokens are its cells.
    Each cell is embedded as the expression-weighted sum of learned gene embeddings (so any gene
    panel can be read), plus a 2-D sinusoid positional encoding for spatial cells and a learned
    token for the others; a Flowformer (linear attention) encodes all cells of the sample together;
    a Gaussian-mixture latent space and a batch-aware decoder reconstruct masked expression. One
    model trains on a corpus of datasets with different gene panels: each cell contributes only the
    genes its dataset measured.

    Differences from the authors' package (``cellplm`` 0.1), on purpose:

    * the spatial positional encoding is used (the released embedder hard-wires it to 0);
      :meth:`load_pretrained` turns it off because their checkpoint was trained without it;
    * zero-shot embeddings are deterministic (most probable mixture component, posterior mean);
      the released code samples a component on every call (``stochastic_embedding=True``);
    * pre-training code is included and runs through scvi-tools/Lightning (DDP, backed h5ad);
    * any count matrix (dense, CSR, CSC, backed) is accepted; genes are mapped offline by a
      ``var`` column (no web query); checkpoints load with ``weights_only=True`` and every
      parameter or gene that does not match is reported, not silently dropped;
    * the decoder mixes unseen batches by the mean of the batch embeddings (the paper), not
      their sum (``covariate_mixture="sum"`` reproduces the release).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Registry of a saved model (used by :meth:`load`).
    vocabulary
        Gene vocabulary of the model; default the genes of ``adata`` (``var_names`` or
        ``var[gene_key]``).
    gene_key
        Column of ``adata.var`` with the gene identifiers of the vocabulary (default ``var_names``).
    drop_unknown_genes
        Ignore genes of ``adata`` that are not in ``vocabulary`` instead of raising.
    n_hidden, n_layers, n_heads, n_latent, n_clusters, n_decoder_hidden, n_decoder_layers
        Architecture (paper: 1024, 4, 8, 512, 16, 1024, 2).
    n_batch, n_dataset
        Decoder embedding table sizes (default: the registered samples and datasets).
    likelihood
        ``"mse"`` on log-normalised values (paper) or ``"nb"`` on counts (released code).
    input_transform
        ``"normalize_log1p"`` (paper) or ``"log1p"`` of raw counts (released code).
    target_sum
        Library size of the normalisation (1e4).
    dropout, norm
        Dropout (0.2) and the embedder/decoder normalisation (``"groupnorm"``).
    spatial_pe
        Use the spatial positional encoding.
    n_pe_neighbors
        With ``k > 0``, a graph-attention layer adds a summary of each spatial cell's ``k``
        nearest cells to its token (SpaFormer's conditional positional encoding, not in the
        paper; 0 turns it off). It starts at zero, so it can be added when fine-tuning a model
        pre-trained without it (``CellPLM.from_model(..., n_pe_neighbors=12)``).
    cell_mask_rate, gene_mask_rate, mask_beta, drop_node_rate
        Masking (0.75 / 0.25; ``mask_beta`` draws each cell's gene rate from Beta(5, 13) as the
        released code) and DropNode (0.3).
    use_covariates
        Decode with each cell's own sample/dataset embedding (models trained on this data);
        ``False`` uses the mixture (transferred and pre-trained models).
    covariate_mixture
        ``"mean"`` (paper) or ``"sum"`` (released code) of the embeddings for unseen samples.
    stochastic_embedding
        Reproduce the released code's random inference (for parity checks).
    classification_weight, reconstruction_weight
        Loss weights of the annotation head and of the reconstruction.
    max_cells
        Cap on the cells of one training step (samples above it are cut into random chunks).

    Examples
    --------
    >>> import scfound as sf
    >>> sf.CellPLM.setup_anndata(corpus, layer="counts", group_key="sample", dataset_key="dataset")
    >>> model = sf.CellPLM(corpus, n_hidden=256, n_layers=2, n_latent=64)
    >>> model.train(max_epochs=50)
    >>> query.obsm["X_cellplm"] = sf.CellPLM.from_model(model, query).get_latent_representation()

    """

    _module_cls = CellPLMModule
    #: pre-trained weights (and their report) stay known through save and load
    _saved_attrs = ("pretrained_", "pretrained_report_")

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        vocabulary: Sequence[str] | None = None,
        gene_key: str | None = None,
        drop_unknown_genes: bool = False,
        n_hidden: int = 1024,
        n_layers: int = 4,
        n_heads: int = 8,
        n_latent: int = 512,
        n_clusters: int = 16,
        n_decoder_hidden: int = 1024,
        n_decoder_layers: int = 2,
        n_batch: int | None = None,
        n_dataset: int | None = None,
        likelihood: Literal["mse", "nb"] = "mse",
        input_transform: Literal["normalize_log1p", "log1p"] = "normalize_log1p",
        target_sum: float = 1e4,
        dropout: float = 0.2,
        norm: str = "groupnorm",
        spatial_pe: bool = True,
        n_pe_neighbors: int = 0,
        cell_mask_rate: float = 0.75,
        gene_mask_rate: float = 0.25,
        mask_beta: bool = False,
        drop_node_rate: float = 0.3,
        use_covariates: bool = True,
        covariate_mixture: Literal["mean", "sum"] = "mean",
        stochastic_embedding: bool = False,
        classification_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        max_cells: int | None = 4000,
    ):
        super().__init__(adata, registry)
        for name, rate in [("cell_mask_rate", cell_mask_rate), ("gene_mask_rate", gene_mask_rate)]:
            if not 0 <= rate < 1:
                raise ValueError(f"{name} must be in [0, 1), got {rate}.")
        if not 0 <= drop_node_rate < 1:
            raise ValueError(f"drop_node_rate must be in [0, 1), got {drop_node_rate}.")
        if isinstance(n_pe_neighbors, bool) or int(n_pe_neighbors) != n_pe_neighbors:
            raise ValueError(f"n_pe_neighbors must be a whole number, got {n_pe_neighbors!r}.")
        if n_pe_neighbors < 0:
            raise ValueError(f"n_pe_neighbors must be >= 0 (0: off), got {n_pe_neighbors}.")
        genes = self._gene_names(self.adata, gene_key)
        vocabulary = list(genes) if vocabulary is None else [str(g) for g in vocabulary]
        self.vocabulary = vocabulary
        self.gene_key = gene_key
        input_genes = map_genes(genes, vocabulary, drop_unknown_genes)
        if likelihood == "nb":
            check_expression(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
                "the registered counts (likelihood='nb')",
                integer=True,
            )
        n_labels = self._n_labels()
        self.max_cells = max_cells
        self.pretrained_ = False
        self.module = self._module_cls(
            n_vocab=len(vocabulary),
            input_genes=torch.from_numpy(input_genes),
            measured=torch.from_numpy(self._measured()),
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_latent=n_latent,
            n_clusters=n_clusters,
            n_decoder_hidden=n_decoder_hidden,
            n_decoder_layers=n_decoder_layers,
            n_batch=self.summary_stats.n_batch if n_batch is None else n_batch,
            n_dataset=self._n_datasets() if n_dataset is None else n_dataset,
            n_labels=n_labels,
            likelihood=likelihood,
            input_transform=input_transform,
            target_sum=target_sum,
            dropout=dropout,
            norm=norm,
            spatial_pe=spatial_pe,
            n_pe_neighbors=n_pe_neighbors,
            cell_mask_rate=cell_mask_rate,
            gene_mask_rate=gene_mask_rate,
            mask_beta=mask_beta,
            drop_node_rate=drop_node_rate,
            use_covariates=use_covariates,
            covariate_mixture=covariate_mixture,
            stochastic_embedding=stochastic_embedding,
            classification_weight=classification_weight,
            reconstruction_weight=reconstruction_weight,
        )
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"CellPLM: {len(vocabulary)} genes in the vocabulary ({int((input_genes >= 0).sum())} "
            f"in the data), n_hidden={n_hidden}, n_layers={n_layers}, n_latent={n_latent}, "
            f"n_clusters={n_clusters}, likelihood={likelihood}, {n_params / 1e6:.1f}M parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        group_key: str | None = None,
        dataset_key: str | None = None,
        spatial_key: str | None = None,
        labels_key: str | None = None,
        unlabeled_category: str = "unknown",
        measured_key: str = MEASURED_KEY,
        perturbation_key: str | None = None,
        *,
        sample_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData (or a corpus of datasets concatenated into one) with CellPLM.

        Parameters
        ----------
        adata
            Cells x genes with counts; may be backed (``anndata.read_h5ad(path, backed="r")``).
        layer
            Layer with non-negative counts; ``None`` uses ``.X``.
        group_key
            Column of ``adata.obs`` with the group of each cell (tissue sample, field of view or
            tile): a group is one sentence (its cells attend to each other) and one decoder batch.
            ``None``: the whole AnnData is one group.
        dataset_key
            Column of ``adata.obs`` with the dataset of each cell (for corpora of datasets with
            different gene panels, see :func:`scfound.pp.build_corpus`).
        spatial_key
            Key of ``(n_obs, 2)`` (x, y) or ``(n_obs, 3)`` (x, y, z) coordinates in
            ``adata.obsm``; rows with NaN are non-spatial.
        labels_key, unlabeled_category
            Cell-type labels for annotation; cells with ``unlabeled_category`` are not used by the
            classification loss.
        measured_key
            Key of a genes x datasets boolean table in ``adata.varm`` (columns named by the
            datasets) telling which genes each dataset measured; absent: every gene is measured.
        perturbation_key
            Column of ``adata.obs`` naming the genes perturbed in each cell (Perturb-seq), joined by
            ``"+"``; ``"ctrl"``, ``"control"`` or empty for control cells. Their input is set to
            the paper's sentinel (-100) so that the model learns the perturbations' effects.
        sample_key
            Deprecated name of ``group_key``.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        """
        check_model_data(adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        if kwargs.get("source_registry") is not None and group_key is None:
            group_key, sample_key = sample_key, None  # saved before `sample_key` was renamed
        group_key = resolve_group_key(group_key, sample_key, "CellPLM.setup_anndata")
        record_group_key(setup_method_args, group_key)
        check_expression(get_matrix(adata, layer), layer_name(layer))
        check_obs_keys(adata, group_key=group_key, dataset_key=dataset_key, labels_key=labels_key)
        if group_key is not None:
            check_groups(adata, group_key)
        if spatial_key is not None:
            _check_partly_spatial(adata, spatial_key, group_key)
        if perturbation_key is not None:
            perturbed_genes(adata, perturbation_key)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, group_key),
            CategoricalObsField(DATASET_KEY, dataset_key),
        ]
        if spatial_key is not None:
            anndata_fields.append(QuietObsmField(SPATIAL_KEY, spatial_key))
        if labels_key is not None:
            anndata_fields.append(
                LabelsWithUnlabeledObsField(
                    REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category
                )
            )
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        register_fields(cls, adata_manager, adata, **kwargs)

    # ----------------------------------------------------------------- transfer
    @classmethod
    def from_model(
        cls,
        model: CellPLM,
        adata: AnnData,
        *,
        gene_key: str | None = None,
        drop_unknown_genes: bool = False,
        **overrides,
    ) -> CellPLM:
        """Carry a trained CellPLM over to new data (zero-shot use or fine-tuning).

        The new model has the same vocabulary and weights (``pretrained_`` is True when
        ``model`` is trained or pre-trained, while ``is_trained_`` and ``history`` describe
        training on ``adata`` only); ``adata``
        (registered with :meth:`setup_anndata`) may hold any subset of the vocabulary's genes.
        Its samples are new to the decoder, which therefore uses the mixture of the pre-training
        batch embeddings. A new annotation head is created when ``adata`` was registered with
        ``labels_key``.

        Parameters
        ----------
        model
            Trained model.
        adata
            New data, registered with :meth:`setup_anndata`.
        gene_key, drop_unknown_genes
            See :class:`CellPLM`.
        **overrides
            Settings to change (e.g. ``drop_node_rate``, ``cell_mask_rate``, ``dropout``).

        """
        params = dict(model.init_params_["non_kwargs"])
        for key in ("vocabulary", "gene_key", "drop_unknown_genes"):
            params.pop(key, None)
        params.update(
            n_batch=model.module.decoder.n_covariates["batch"],
            n_dataset=model.module.decoder.n_covariates["dataset"],
            use_covariates=False,
        )
        params.update(overrides)
        new = cls(
            adata,
            vocabulary=model.vocabulary,
            gene_key=gene_key,
            drop_unknown_genes=drop_unknown_genes,
            **params,
        )
        state = {
            k: v for k, v in model.module.state_dict().items() if not k.startswith("classifier")
        }
        new.module.load_state_dict(state, strict=False)
        # zero-shot use needs learned weights: an untrained source gives an untrained model
        new.pretrained_ = bool(model.is_trained_ or getattr(model, "pretrained_", False))
        return new

    @classmethod
    def load_pretrained(
        cls,
        path: str,
        adata: AnnData,
        *,
        gene_key: str | None = None,
        drop_unknown_genes: bool = True,
        **overrides,
    ) -> CellPLM:
        """Load a checkpoint in the authors' layout (``{prefix}.config.json`` + ``.best.ckpt``).

        Parameters
        ----------
        path
            Checkpoint prefix, e.g. ``"ckpt/20231027_85M"`` (``.config.json`` and
            ``.best.ckpt`` are appended), or the path of either file.
        adata
            Data registered with :meth:`setup_anndata`, with raw counts.
        gene_key
            Column of ``adata.var`` with the checkpoint's gene identifiers (Ensembl IDs for the
            released checkpoints); default ``var_names``. Nothing is looked up online.
        drop_unknown_genes
            Ignore genes that are not in the checkpoint's vocabulary (they are reported).
        **overrides
            Settings to change (e.g. ``stochastic_embedding=True`` for the released behaviour).

        Returns
        -------
        The model, with ``pretrained_report_`` listing unmatched parameters and genes.

        """
        from ._pretrained import load_authors_checkpoint

        return load_authors_checkpoint(
            cls, path, adata, gene_key=gene_key, drop_unknown_genes=drop_unknown_genes, **overrides
        )

    # -------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int = 100,
        *,
        lr: float = 2e-4,
        weight_decay: float = 1e-8,
        n_steps_kl_warmup: int | None = 1000,
        max_kl_weight: float = KL_WEIGHT,
        plan_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        """Pre-train or fine-tune with scvi-tools' :class:`~scvi.train.TrainingPlan` and Lightning.

        One step is one sample (or a random chunk of at most ``max_cells`` of its cells);
        ``train_size < 1`` holds out whole samples for validation; ``strategy="ddp"`` with several
        devices shards the samples of each epoch across processes (it runs with
        ``find_unused_parameters=True``).

        Parameters
        ----------
        max_epochs
            Passes over all training samples.
        lr, weight_decay
            AdamW settings (paper 2e-4 / 1e-8).
        n_steps_kl_warmup, max_kl_weight
            Steps of linear warm-up of the latent KL weight, from 0 to ``max_kl_weight``
            (default :data:`KL_WEIGHT`; 1 is the plain evidence lower bound, which collapses the
            posterior on small corpora).
        plan_kwargs
            Extra arguments of the training plan (over the KL schedule above).
        **kwargs
            The other arguments of :meth:`scfound.models.base.GroupModelMixin.train`:
            ``train_size``, ``validation_size``, ``early_stopping``,
            ``early_stopping_patience``, ``gradient_clip_val``, ``accelerator``, ``devices``,
            ``strategy``, ``seed``, ``enable_progress_bar``, ``datasplitter_kwargs`` and
            Lightning trainer arguments.

        """
        if not max_kl_weight >= 0:
            raise ValueError(f"max_kl_weight must be a number >= 0, got {max_kl_weight!r}.")
        kl_schedule = {
            "n_steps_kl_warmup": n_steps_kl_warmup,
            "n_epochs_kl_warmup": None,
            "max_kl_weight": max_kl_weight,
        }
        super().train(
            max_epochs,
            lr=lr,
            weight_decay=weight_decay,
            plan_kwargs={**kl_schedule, **(plan_kwargs or {})},
            **kwargs,
        )

    def _plan_defaults(self, lr: float, weight_decay: float) -> dict:
        """The shared AdamW with scvi-tools' ``eps=0.01`` instead of PyTorch's 1e-8.

        Every CellPLM benchmark in ``benchmarks/results`` was trained at ``eps=0.01``, which
        damps steps whose gradients are below ~0.01 (the authors' AdamW uses 1e-8); the defaults
        stay at the benchmarked setting until it is rerun. ``plan_kwargs={"eps": 1e-8}`` gives
        the authors' optimizer.
        """
        return {**super()._plan_defaults(lr, weight_decay), "eps": 0.01}

    def train_annotation_head(
        self,
        *,
        max_epochs: int = 200,
        lr: float = 1e-2,
        weight_decay: float = 1e-3,
        batch_size: int = 1024,
        seed: int = 0,
        max_cells: int | None = INFERENCE_MAX_CELLS,
    ) -> None:
        """Fit the annotation head alone on the frozen embeddings (a linear probe).

        The labelled cells' deterministic embeddings (:meth:`get_latent_representation`) are
        standardised and a multinomial logistic regression with an L2 penalty is fitted on them
        with Adam; the standardisation is then folded into the head, so :meth:`predict` applies
        it to the embeddings unchanged. The encoder and decoder are not touched. On MoP cells
        unseen in pre-training it matched fine-tuning the whole model in macro-F1 and beat it in
        accuracy, in seconds (``benchmarks/results/cellplm.md``, two seeds).

        Parameters
        ----------
        max_epochs
            Passes over the labelled cells.
        lr, weight_decay
            Adam step size and L2 penalty on the head's weights.
        batch_size
            Cells per step.
        seed
            Seed of the initialisation and shuffling.
        max_cells
            Cells of one sample encoded together.

        """
        if self.module.classifier is None:
            raise ValueError(
                "this model has no annotation head: register the data with `labels_key=` (and "
                "carry the model over with CellPLM.from_model)."
            )
        if max_epochs < 1 or batch_size < 1:
            raise ValueError(
                f"max_epochs and batch_size must be >= 1, got {max_epochs} and {batch_size}."
            )
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        head = self.module.classifier[-1]
        labelled = codes < head.out_features
        z = torch.from_numpy(self.get_latent_representation(max_cells=max_cells)[labelled])
        y = torch.from_numpy(codes[labelled].astype(np.int64))
        mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
        z = (z - mean) / std
        generator = torch.Generator().manual_seed(seed)
        probe = torch.nn.Linear(z.shape[1], head.out_features)
        with torch.no_grad():
            probe.weight.normal_(0.0, 0.01, generator=generator)
            probe.bias.zero_()
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
        for _ in range(max_epochs):
            for idx in torch.randperm(len(y), generator=generator).split(batch_size):
                loss = torch.nn.functional.cross_entropy(probe(z[idx]), y[idx])
                loss = loss + 0.5 * weight_decay * probe.weight.pow(2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():  # fold (z - mean) / std into the head
            weight = probe.weight / std
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_((probe.bias - weight @ mean).to(head.bias))
        self.is_trained_ = True

    # ------------------------------------------------------------- inference
    def _inference_max_cells(self) -> int | None:
        """Whole samples up to :data:`INFERENCE_MAX_CELLS` cells (not the training cap)."""
        return INFERENCE_MAX_CELLS

    def _has_weights(self) -> bool:
        """Trained here, or carrying pre-trained weights (zero-shot use is inference)."""
        return bool(self.is_trained_ or self.pretrained_)

    def _untrained_message(self) -> str:
        return (
            "this CellPLM has neither been trained nor given pre-trained weights: its outputs "
            "would come from random weights. Train it (model.train()), carry a trained model "
            "over to the data (CellPLM.from_model(trained, adata)) or load a checkpoint "
            "(CellPLM.load, CellPLM.load_pretrained)."
        )

    def _group_forward(self, tensors: dict[str, torch.Tensor], decode: bool) -> tuple[dict]:
        """One dict for ``fn(tensors, outputs)``: inference outputs updated by the decoder's."""
        inference_outputs, generative_outputs = super()._group_forward(tensors, decode)
        return ({**inference_outputs, **generative_outputs},)

    def get_gene_embeddings(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """The gene embedding table of the expression embedder: genes x ``n_hidden``.

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
        return gene_table(self.module.embedder.gene_embedding, self.vocabulary, genes)

    def get_latent_representation(
        self, adata: AnnData | None = None, max_cells: int | None = INFERENCE_MAX_CELLS
    ) -> np.ndarray:
        """Cell embeddings (posterior means), ``(n_obs, n_latent)``; deterministic by default.

        Parameters
        ----------
        adata
            Data registered with :meth:`setup_anndata` (default: the model's). Another AnnData
            needs the model's genes in the model's order and valid counts; data on another gene
            panel is carried over by name with :meth:`from_model`.
        max_cells
            Cells of one sample encoded together; larger samples are cut in fixed chunks.

        Raises
        ------
        RuntimeError
            If the model has neither been trained nor given pre-trained weights.
        ValueError
            If ``adata``'s genes differ from the model's (missing and unknown genes are listed),
            or its counts hold NaN, infinite, negative or float32-overflowing values. ``adata``
            is left unchanged.

        """
        return self._predict(adata, lambda t, out: out["qz_m"], max_cells, decode=False)

    def get_denoised_expression(
        self,
        adata: AnnData | None = None,
        *,
        scale: Literal["log1p", "counts"] = "log1p",
        max_cells: int | None = INFERENCE_MAX_CELLS,
    ) -> np.ndarray:
        """Reconstructed expression of every cell at every registered gene, ``(n_obs, n_vars)``.

        For a corpus that joins a spatial panel with a scRNA-seq reference, the spatial cells'
        values at genes only the reference measured are their imputation. Genes outside the
        vocabulary are NaN.

        Parameters
        ----------
        adata
            Data registered with :meth:`setup_anndata` (default: the model's).
        scale
            ``"log1p"``: log-normalised (library ``target_sum``); ``"counts"``: expected counts
            at each cell's observed library size, which covers the genes the cell's dataset
            measured; so the counts of those genes add up to it, and those of genes it did not
            measure (imputed from other datasets) are on the same depth.
        max_cells
            Cells of one sample decoded together.

        """
        adata = self._inference_adata(adata)
        values = self._decode(adata, scale, max_cells, checked=True)
        full = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
        full[:, self.module.columns.cpu().numpy()] = values
        return full

    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        scale: Literal["counts", "log1p"] = "counts",
        max_cells: int | None = INFERENCE_MAX_CELLS,
    ) -> pd.DataFrame:
        """Decoded expression of every cell at ``genes``, ``(n_obs, n_genes)``.

        The model decodes every registered gene of its vocabulary, measured or not: for a corpus
        that joins a spatial panel with a scRNA-seq reference (:func:`scfound.pp.build_corpus`),
        the spatial cells' values at the genes only the reference measured are their
        imputation, and at measured genes their denoised values. The values are those of
        :meth:`get_denoised_expression`.

        Parameters
        ----------
        adata
            Data registered with :meth:`setup_anndata` (default: the model's).
        genes
            Genes (``var_names``) to return; default every registered gene the model decodes
            (those in its vocabulary).
        scale
            ``"counts"``: expected counts at each cell's observed library size (over the genes
            its dataset measured); ``"log1p"``: log-normalised (library ``target_sum``).
        max_cells
            Cells of one sample decoded together.

        Returns
        -------
        DataFrame of ``float32`` values, cells (``obs_names``) x genes.

        """
        check_scale(scale)
        adata_ = self._inference_adata(adata)
        decoded = adata_.var_names[self.module.columns.cpu().numpy()]
        positions = None
        if genes is not None:
            genes = check_genes_present(
                genes, decoded, "the genes the model decodes (registered and in its vocabulary)"
            )
            positions = torch.from_numpy(decoded.get_indexer(genes))
        values = self._decode(adata_, scale, max_cells, positions, checked=True)
        columns = decoded.copy() if genes is None else pd.Index(genes)
        return pd.DataFrame(values, index=adata_.obs_names.copy(), columns=columns)

    def get_perturbed_expression(
        self,
        genes: Sequence[str],
        adata: AnnData | None = None,
        *,
        max_cells: int | None = INFERENCE_MAX_CELLS,
    ) -> np.ndarray:
        """Predicted log-normalised expression after perturbing ``genes`` in every cell.

        The inputs of ``genes`` are set to the perturbation sentinel (on top of any perturbation
        registered with ``perturbation_key``) and every cell is decoded; compare with
        :meth:`get_denoised_expression` of the same cells for the predicted effect. Meaningful
        after fine-tuning on Perturb-seq data registered with ``perturbation_key``.

        Parameters
        ----------
        genes
            Genes (``var_names``) to perturb.
        adata
            Cells to perturb, e.g. the control cells (default: the model's data).
        max_cells
            Cells of one sample decoded together.

        """
        adata_ = self._inference_adata(adata)
        genes = check_genes_present(genes, adata_.var_names, "adata.var_names (genes to perturb)")

        def decode(tensors, out):
            return torch.log1p(self._fractions(out["px"]) * self.module.target_sum)

        values = self._predict(
            adata_, decode, max_cells, checked=True, extra_perturbed=tuple(genes)
        )
        full = np.full(adata_.shape, np.nan, dtype=np.float32)
        full[:, self.module.columns.cpu().numpy()] = values
        return full

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        soft: bool = False,
        max_cells: int | None = INFERENCE_MAX_CELLS,
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type predictions of the annotation head (labels, or probabilities with ``soft``)."""
        if self.module.classifier is None:
            raise ValueError(
                "this model has no annotation head: register the data with `labels_key=` and "
                "fine-tune it (scfound.tl.annotate does both)."
            )
        adata = self._inference_adata(adata)
        probs = self._predict(
            adata,
            lambda t, out: torch.softmax(self.module.classifier(out["qz_m"]), -1),
            max_cells,
            decode=False,
            checked=True,
        )
        classes = self._label_categories()
        if soft:
            return pd.DataFrame(probs, index=adata.obs_names, columns=classes)
        return np.asarray(classes)[probs.argmax(1)]

    # ----------------------------------------------------------------- utils
    def _decode(
        self,
        adata: AnnData | None,
        scale: Literal["log1p", "counts"],
        max_cells: int | None,
        positions: torch.Tensor | None = None,
        checked: bool = False,
    ) -> np.ndarray:
        """Decoded values at the model's columns (or at ``positions`` among them), cells x genes.

        ``"log1p"``: log-normalised to ``target_sum``; ``"counts"``: expected counts at each
        cell's observed library, which covers the genes its dataset measured.
        """
        check_scale(scale)
        module = self.module

        def denoise(tensors, out):
            frac = self._fractions(out["px"])
            if scale == "log1p":
                values = torch.log1p(frac * module.target_sum)
            else:
                measured = (frac * out["measured"]).sum(-1, keepdim=True).clamp_min(1e-8)
                values = frac / measured * out["counts"].sum(-1, keepdim=True)
            return values if positions is None else values[:, positions.to(values.device)]

        return self._predict(adata, denoise, max_cells, checked=checked)

    def _fractions(self, px: torch.Tensor) -> torch.Tensor:
        """Decoder output as per-cell expression fractions over the model's columns."""
        if self.module.likelihood == "nb":
            rate = torch.exp(px).clamp(1e-5, 1e6)
            return rate / rate.sum(-1, keepdim=True)
        frac = torch.expm1(px.clamp_min(0))
        return frac / frac.sum(-1, keepdim=True).clamp_min(1e-8)

    def _extras(
        self, manager: AnnDataManager | None = None, extra_perturbed: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Per-cell column indices of perturbed genes (registered ones plus ``extra_perturbed``)."""
        manager = manager or self.adata_manager
        key = manager.registry["setup_args"].get("perturbation_key")
        adata = manager.adata
        if key is None and not extra_perturbed:
            return {}
        per_cell = (
            perturbed_genes(adata, key) if key is not None else [[] for _ in range(adata.n_obs)]
        )
        cols = adata.var_names.get_indexer(list(extra_perturbed))
        rows = [adata.var_names.get_indexer(g).tolist() + cols.tolist() for g in per_cell]
        width = max(1, max(len(r) for r in rows))
        out = np.full((adata.n_obs, width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return {PERTURBED_KEY: out}

    @staticmethod
    def _gene_names(adata: AnnData | None, gene_key: str | None) -> list[str]:
        if adata is None:
            raise ValueError("CellPLM needs an AnnData registered with setup_anndata.")
        if gene_key is None:
            return adata.var_names.astype(str).tolist()
        if gene_key not in adata.var:
            raise KeyError(
                f"gene_key {gene_key!r} not found in adata.var "
                f"(columns: {list(adata.var.columns)})."
            )
        return adata.var[gene_key].astype(str).tolist()

    def _group_codes(self, manager: AnnDataManager | None = None) -> np.ndarray:
        manager = manager or self.adata_manager
        return np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()

    def _dataset_categories(self) -> list[str]:
        mapping = self.adata_manager.get_state_registry(DATASET_KEY).categorical_mapping
        return [str(c) for c in mapping]

    def _n_datasets(self) -> int:
        return len(self._dataset_categories())

    def _label_categories(self) -> list[str]:
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        unlabeled = state.unlabeled_category
        return [str(c) for c in state.categorical_mapping if c != unlabeled]

    def _n_labels(self) -> int:
        if REGISTRY_KEYS.LABELS_KEY not in self.adata_manager.data_registry:
            return 0
        return len(self._label_categories())

    def _measured(self) -> np.ndarray:
        """``(n_datasets, n_vars)`` table of the genes each registered dataset measured."""
        key = self.adata_manager.registry["setup_args"].get("measured_key", MEASURED_KEY)
        datasets = self._dataset_categories()
        if key not in self.adata.varm:
            return np.ones((1, self.adata.n_vars), dtype=bool)
        table = self.adata.varm[key]
        if not isinstance(table, pd.DataFrame):
            raise ValueError(
                f"adata.varm[{key!r}] must be a DataFrame with one column per dataset."
            )
        if len(datasets) == 1 and datasets[0] not in table.columns:
            return np.ones((1, self.adata.n_vars), dtype=bool)
        missing = [d for d in datasets if d not in table.columns]
        if missing:
            raise ValueError(
                f"adata.varm[{key!r}] has no column for datasets {missing[:5]} "
                f"(columns: {list(table.columns)[:5]})."
            )
        return np.stack([table[d].to_numpy(dtype=bool) for d in datasets])


CONTROL_LABELS = {"", "ctrl", "control", "nan", "none"}


def perturbed_genes(adata: AnnData, key: str) -> list[list[str]]:
    """Genes perturbed in each cell, from ``adata.obs[key]`` (``"G1+G2"``; control: ``"ctrl"``)."""
    if key not in adata.obs:
        raise KeyError(f"perturbation column {key!r} not found in adata.obs.")
    values = adata.obs[key].astype(str).to_numpy()
    per_cell = [
        [] if v.strip().lower() in CONTROL_LABELS else [g.strip() for g in v.split("+")]
        for v in values
    ]
    known = set(adata.var_names)
    unknown = sorted({g for genes in per_cell for g in genes if g not in known})
    if unknown:
        raise ValueError(
            f"adata.obs[{key!r}] names {len(unknown)} genes that are not in adata.var_names "
            f"(e.g. {unknown[:10]})."
        )
    return per_cell


def _check_partly_spatial(adata: AnnData, spatial_key: str, group_key: str | None) -> None:
    """Coordinates of shape ``(n_obs, 2)`` or ``(n_obs, 3)``, each group wholly located or NaN.

    A group (one sentence) is encoded with positions only when every cell has them, so a group
    with some NaN rows would silently lose the positions of all its cells.
    """
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"spatial coordinates adata.obsm[{spatial_key!r}] not found "
            f"(obsm has {list(adata.obsm.keys())})."
        )
    try:
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must hold numbers: {err}") from None
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] must have shape (n_obs, 2) or (n_obs, 3) for CellPLM, "
            f"got {coords.shape}."
        )
    located = np.isfinite(coords).all(1)
    if located.all() or not located.any():
        return
    groups = (
        np.zeros(adata.n_obs, dtype=int)
        if group_key is None
        else adata.obs[group_key].astype(str).to_numpy()
    )
    mixed = sorted({str(g) for g in groups[~located]} & {str(g) for g in groups[located]})
    if mixed:
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] has NaN coordinates for some cells of group(s) "
            f"{mixed[:5]} and numbers for others; a group is encoded with positions only when "
            "all its cells have them. Give the cells coordinates, or drop them."
        )
