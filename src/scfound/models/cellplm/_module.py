"""CellPLM module: a cell language model over the cells of one tissue sample (tensors only)."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.nn import functional as F

from scfound._constants import DATASET_KEY, SPATIAL_KEY
from scfound.nn import FlowformerEncoder, log_normalize, nb_nll

from ._components import BatchAwareDecoder, GaussianMixtureLatent, GeneExpressionEmbedder

#: per-cell column indices of perturbed genes (``-1`` pads)
PERTURBED_KEY = "perturbed"
#: input value of perturbed genes (the paper's sentinel)
PERTURBATION_SENTINEL = -100.0


class CellPLMModule(BaseModuleClass):
    """Cells are tokens, a tissue sample (or FOV) is a sentence.

    ``gene-expression embedder -> Flowformer over the sample's cells -> LayerNorm ->
    Gaussian-mixture latent -> batch-aware decoder``. Pre-training hides entries by bi-level
    masking (a fraction ``cell_mask_rate`` of cells, then ``gene_mask_rate`` of their *measured*
    genes) and scores their reconstruction; each cell only contributes the genes its dataset
    measured.

    Parameters
    ----------
    n_vocab
        Size of the gene vocabulary.
    input_genes
        Vocabulary index of every column of the registered AnnData (``-1``: not in the vocabulary,
        ignored).
    measured
        ``(n_dataset, n_columns)`` boolean: which columns each dataset measured (``None``: all).
    n_hidden, n_layers, n_heads
        Encoder width, depth and heads (paper 1024 / 4 / 8).
    n_latent, n_clusters
        Latent size and Gaussian-mixture components (paper 512 / 16).
    n_decoder_hidden, n_decoder_layers
        Decoder width and depth (paper 1024 / 2).
    n_batch, n_dataset
        Sizes of the decoder's batch and dataset embedding tables.
    n_labels
        Classes of the annotation head (0: no head).
    likelihood
        ``"mse"`` on log-normalised values (paper) or ``"nb"`` on counts (released code).
    input_transform
        ``"normalize_log1p"`` (library size ``target_sum`` then ``log1p``, paper) or ``"log1p"`` of
        raw counts (released code).
    use_covariates
        Decode with each cell's own batch/dataset embedding; ``False`` uses their mixture.
    stochastic_embedding
        Reproduce the released code's random cluster draw at inference (see
        :class:`GaussianMixtureLatent`).

    """

    def __init__(
        self,
        n_vocab: int,
        input_genes: torch.Tensor,
        measured: torch.Tensor | None = None,
        n_hidden: int = 1024,
        n_layers: int = 4,
        n_heads: int = 8,
        n_latent: int = 512,
        n_clusters: int = 16,
        n_decoder_hidden: int = 1024,
        n_decoder_layers: int = 2,
        n_batch: int = 0,
        n_dataset: int = 0,
        n_labels: int = 0,
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
    ):
        super().__init__()
        if likelihood not in ("mse", "nb"):
            raise ValueError(f"likelihood must be 'mse' or 'nb', got {likelihood!r}.")
        if input_transform not in ("normalize_log1p", "log1p"):
            raise ValueError(
                f"input_transform must be 'normalize_log1p' or 'log1p', got {input_transform!r}."
            )
        self.likelihood = likelihood
        self.input_transform = input_transform
        self.target_sum = float(target_sum)
        self.cell_mask_rate = cell_mask_rate
        self.gene_mask_rate = gene_mask_rate
        self.mask_beta = mask_beta
        self.drop_node_rate = drop_node_rate
        self.use_covariates = use_covariates
        self.classification_weight = classification_weight
        self.reconstruction_weight = reconstruction_weight
        self.set_input_genes(input_genes, measured)

        self.embedder = GeneExpressionEmbedder(
            n_vocab, n_hidden, dropout, norm, spatial_pe, n_pe_neighbors
        )
        self.encoder = FlowformerEncoder(n_hidden, n_layers, n_heads, dropout)
        self.encoder_norm = nn.LayerNorm(n_hidden)
        self.latent = GaussianMixtureLatent(
            n_hidden, n_latent, n_clusters, stochastic=stochastic_embedding
        )
        self.decoder = BatchAwareDecoder(
            n_latent,
            n_vocab,
            n_decoder_hidden,
            n_decoder_layers,
            n_batch,
            n_dataset,
            dropout,
            norm,
            covariate_mixture,
            dispersion=likelihood == "nb",
        )
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(n_latent, n_labels)) if n_labels else None
        )

    def set_input_genes(self, input_genes: torch.Tensor, measured: torch.Tensor | None) -> None:
        """Map the columns of the registered data to the vocabulary (not saved with the weights)."""
        input_genes = torch.as_tensor(input_genes, dtype=torch.long)
        columns = torch.nonzero(input_genes >= 0).ravel()
        if measured is None:
            measured = torch.ones(1, len(input_genes), dtype=torch.bool)
        self.columns_total = len(input_genes)
        self.register_buffer("columns", columns, persistent=False)
        self.register_buffer("gene_ids", input_genes[columns], persistent=False)
        self.register_buffer(
            "measured", torch.as_tensor(measured, dtype=torch.bool)[:, columns], persistent=False
        )

    # ----------------------------------------------------------------- scvi API
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "dataset_index": tensors.get(DATASET_KEY),
            "coords": tensors.get(SPATIAL_KEY),
            "perturbed": tensors.get(PERTURBED_KEY),
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        keep = inference_outputs["keep"]

        def pick(key):
            value = tensors.get(key)
            return None if value is None or keep is None else value[keep]

        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        dataset = tensors.get(DATASET_KEY)
        return {
            "z": inference_outputs["z"],
            "batch_index": (batch if keep is None else pick(REGISTRY_KEYS.BATCH_KEY))
            if self.use_covariates
            else None,
            "dataset_index": (dataset if keep is None else pick(DATASET_KEY))
            if self.use_covariates
            else None,
        }

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Input transform of counts ``x`` over the model's columns."""
        if self.input_transform == "log1p":
            return torch.log1p(x)
        return log_normalize(x, self.target_sum)

    def _draw_mask(self, measured: torch.Tensor) -> torch.Tensor:
        """Bi-level mask (``True`` = hidden) of measured entries in ``cell_mask_rate`` of cells."""
        n = measured.shape[0]
        n_masked = int(self.cell_mask_rate * n)
        cells = torch.zeros(n, dtype=torch.bool, device=measured.device)
        cells[torch.randperm(n, device=measured.device)[:n_masked]] = True
        if self.mask_beta:  # released code: per-cell rate ~ Beta(5, 4 / rate - 3), capped at 0.9
            beta = torch.distributions.Beta(5.0, 4.0 / self.gene_mask_rate + 2.0 - 5.0)
            rate = beta.sample((n, 1)).to(measured.device).clamp_max(0.9)
        else:
            rate = self.gene_mask_rate
        hidden = torch.rand(measured.shape, device=measured.device) < rate
        return hidden & measured & cells.unsqueeze(-1)

    def _perturb(
        self,
        x_in: torch.Tensor,
        xn: torch.Tensor,
        hidden: torch.Tensor | None,
        measured: torch.Tensor,
        perturbed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Set perturbed genes' inputs to the sentinel.

        When training, a perturbed cell's input is the profile of a random control cell of the
        same step (GEARS-style pairing; with the cell's own profile as input the model could copy
        the effect instead of learning it), and all its measured genes are scored.
        """
        n = x_in.shape[0]
        flags = torch.zeros(n, self.columns_total + 1, dtype=torch.bool, device=x_in.device)
        flags.scatter_(1, perturbed.long() + 1, True)  # -1 pads land in column 0, dropped
        flags = flags[:, 1:].index_select(-1, self.columns)
        is_perturbed = flags.any(-1)
        if self.training and bool(is_perturbed.any()):
            controls = torch.nonzero(~is_perturbed).ravel()
            if len(controls):
                pick = torch.randint(len(controls), (int(is_perturbed.sum()),), device=xn.device)
                x_in = x_in.clone()
                x_in[is_perturbed] = xn[controls[pick]]
                if hidden is not None:
                    hidden = hidden.clone()
                    hidden[is_perturbed] = measured[is_perturbed]
        return x_in.masked_fill(flags, PERTURBATION_SENTINEL), hidden

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        dataset_index: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        mask_input: bool = True,
        perturbed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Encode the cells of one sample.

        Training also applies DropNode (``keep`` lists the cells that stayed) and, with
        ``mask_input``, bi-level masking (``hidden`` marks the hidden entries). ``perturbed``
        (``(n, k)`` column indices per cell, ``-1`` padded) sets those inputs to the perturbation
        sentinel.
        """
        keep = None
        if self.training and self.drop_node_rate > 0 and x.shape[0] > 2:
            n_keep = max(2, int(x.shape[0] * (1 - self.drop_node_rate)))
            keep = torch.randperm(x.shape[0], device=x.device)[:n_keep].sort().values
            x = x[keep]
            dataset_index = None if dataset_index is None else dataset_index[keep]
            coords = None if coords is None else coords[keep]
            perturbed = None if perturbed is None else perturbed[keep]
        counts = x.index_select(-1, self.columns)
        xn = self.transform(counts)
        code = (
            torch.zeros(counts.shape[0], dtype=torch.long, device=x.device)
            if dataset_index is None or self.measured.shape[0] == 1
            else dataset_index.reshape(-1).long()
        )
        measured = self.measured[code]
        hidden = self._draw_mask(measured) if mask_input else None
        x_in = xn if hidden is None else xn.masked_fill(hidden, 0.0)
        if perturbed is not None:
            x_in, hidden = self._perturb(x_in, xn, hidden, measured, perturbed)
        spatial = None
        if coords is not None:
            finite = torch.isfinite(coords).all(-1)
            spatial = coords if bool(finite.all()) else None
        h = self.embedder(x_in, self.gene_ids, spatial)
        h = self.encoder_norm(self.encoder(h))
        out = self.latent(h)
        out.update(counts=counts, xn=xn, hidden=hidden, measured=measured, keep=keep)
        return out

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        dataset_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decode latents to the model's columns (log-normalised values or NB log-means)."""
        out = self.decoder(z, self.gene_ids, {"batch": batch_index, "dataset": dataset_index})
        return {"px": out}

    def expected_counts(self, px: torch.Tensor, counts: torch.Tensor, measured: torch.Tensor):
        """NB means: decoder rates rescaled so each cell's measured genes sum to its library."""
        rate = torch.exp(px).clamp(1e-5, 1e6) * measured
        library = (counts * measured).sum(-1, keepdim=True)
        return rate / rate.sum(-1, keepdim=True).clamp_min(1e-8) * library

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Masked reconstruction + ``kl_weight`` x Gaussian-mixture KL (+ annotation CE)."""
        inf = inference_outputs
        px = generative_outputs["px"]
        hidden, measured = inf["hidden"], inf["measured"]
        n = px.shape[0]
        if hidden is None:  # unmasked pass: score every measured entry
            hidden = measured
        if self.likelihood == "mse":
            err = (px - inf["xn"]) ** 2
            recon = (err * hidden).sum(-1)
        else:
            mu = self.expected_counts(px, inf["counts"], measured)
            nll = nb_nll(inf["counts"], mu, self.decoder.dispersion(self.gene_ids))
            masked_cells = hidden.any(-1, keepdim=True)
            # released code: every measured gene of the masked cells, plus the masked entries
            recon = (nll * (measured & masked_cells)).sum(-1) + (nll * hidden).sum(-1)
        kl = self.latent.kl(inf) if "qz_v" in inf else torch.zeros(n, device=px.device)
        loss = self.reconstruction_weight * recon.sum() / n + kl_weight * kl.mean()
        extra = {}
        labels = tensors.get(REGISTRY_KEYS.LABELS_KEY)
        if self.classifier is not None and labels is not None:
            labels = labels.reshape(-1).long()
            if inf["keep"] is not None:
                labels = labels[inf["keep"]]
            known = labels < self.classifier[-1].out_features
            logits = self.classifier(inf["z"])
            ce = (
                F.cross_entropy(logits[known], labels[known])
                if bool(known.any())
                else logits.sum() * 0.0
            )
            loss = loss + self.classification_weight * ce
            extra["classification_loss"] = ce.detach()
        return LossOutput(loss=loss, reconstruction_loss=recon, kl_local=kl, extra_metrics=extra)
