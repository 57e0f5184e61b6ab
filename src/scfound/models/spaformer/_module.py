"""SpaFormer module: a bi-level masked autoencoder over the cells of one group (tensors only)."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from scfound._constants import SPATIAL_KEY
from scfound.nn import (
    GATEncoder,
    MLPDecoder,
    TransformerEncoder,
    ZINBDecoder,
    knn_graph,
    log_normalize,
    normalize_coords,
    positional_encoding,
    zinb_nll,
)

#: batch key of the precomputed graph features of the positional encoding (LapPE, RWPE)
PE_FEATURES_KEY = "pe_features"


class SpaFormerModule(BaseModuleClass):
    """Cells are tokens, a group (FOV or tile) is a sequence; imputation by masked reconstruction.

    Encoder: ``H0 = log1p-normalised expression @ E + PE``, a pre-LN linear-attention transformer
    (or a GAT stack for the SpaGAT baseline), then a linear map to the latent ``Z``. Decoder: a
    per-cell MLP (MSE on log-normalised values) or ZINB head (counts). Training hides entries by
    bi-level masking and scores the reconstruction on the hidden entries only.

    Parameters
    ----------
    n_input
        Number of genes.
    target_sum
        Library size that every cell is normalised to before ``log1p``.
    n_batch
        Number of batches; with more than one a learned batch token is added to each cell.
    n_hidden, n_latent, n_layers, n_heads
        Width of the tokens, latent size, encoder depth and attention heads.
    pos_encoding
        Positional encoding (see :data:`scfound.nn.POSITIONAL_ENCODINGS`).
    encoder
        ``"transformer"`` (SpaFormer) or ``"gat"`` (SpaGAT).
    likelihood
        ``"mse"`` on log-normalised values or ``"zinb"`` on counts.
    variational
        Gaussian latent with a KL term (VAE) instead of a deterministic one (AE).
    cell_mask_rate, gene_mask_rate
        Bi-level masking: fraction ``theta`` of cells selected per step, and probability
        ``gamma`` that a gene of a selected cell is hidden.
    drop_node_rate
        Fraction of cells removed from a training step (DropNode).
    loss_on
        ``"masked_entries"`` (the paper) or ``"masked_cells"`` (all genes of selected cells, as the
        authors' released code).
    n_neighbors
        Neighbours of the k-NN spatial graph built within each step.
    dropout, attn_dropout
        Dropout rates.
    n_spatial_dims
        Coordinate axes: 2 (x, y) or 3 (x, y, z).
    spatial_scale
        Factor per axis multiplied into the coordinates before the graph and the encodings are
        computed (e.g. ``(1, 1, 5)``); ``None`` uses them as they are.

    """

    def __init__(
        self,
        n_input: int,
        target_sum: float,
        n_batch: int = 0,
        n_hidden: int = 128,
        n_latent: int = 20,
        n_layers: int = 2,
        n_heads: int = 8,
        pos_encoding: str = "cond",
        encoder: Literal["transformer", "gat"] = "transformer",
        likelihood: Literal["mse", "zinb"] = "mse",
        variational: bool = False,
        cell_mask_rate: float = 0.5,
        gene_mask_rate: float = 0.5,
        drop_node_rate: float = 0.0,
        loss_on: Literal["masked_entries", "masked_cells"] = "masked_entries",
        n_neighbors: int = 6,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        n_spatial_dims: int = 2,
        spatial_scale: tuple[float, ...] | None = None,
    ):
        super().__init__()
        if spatial_scale is not None and len(spatial_scale) != n_spatial_dims:
            raise ValueError(
                f"spatial_scale must hold {n_spatial_dims} factors (one per axis), got "
                f"{spatial_scale!r}."
            )
        self.n_spatial_dims = n_spatial_dims
        self.spatial_scale = None if spatial_scale is None else tuple(map(float, spatial_scale))
        self.target_sum = float(target_sum)
        self.likelihood = likelihood
        self.variational = variational
        self.cell_mask_rate = cell_mask_rate
        self.gene_mask_rate = gene_mask_rate
        self.drop_node_rate = drop_node_rate
        self.loss_on = loss_on
        self.n_neighbors = n_neighbors
        self.encoder_type = encoder

        self.embed = nn.Linear(n_input, n_hidden)
        self.batch_embed = nn.Embedding(n_batch, n_hidden) if n_batch > 1 else None
        self.pos_encoding = positional_encoding(pos_encoding, n_hidden, n_spatial_dims)
        self.input_dropout = nn.Dropout(dropout)
        if encoder == "transformer":
            self.encoder = TransformerEncoder(n_hidden, n_layers, n_heads, dropout, attn_dropout)
        elif encoder == "gat":
            self.encoder = GATEncoder(n_hidden, n_layers, n_heads, dropout, attn_dropout)
        else:
            raise ValueError(f"encoder must be 'transformer' or 'gat', got {encoder!r}.")
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent) if variational else None
        if likelihood == "mse":
            self.decoder = MLPDecoder(n_latent, n_input, n_hidden, dropout)
        elif likelihood == "zinb":
            self.decoder = ZINBDecoder(n_latent, n_input, n_hidden, dropout)
        else:
            raise ValueError(f"likelihood must be 'mse' or 'zinb', got {likelihood!r}.")

    @property
    def needs_graph(self) -> bool:
        """Whether a step needs the spatial graph of its cells."""
        return self.encoder_type == "gat" or self.pos_encoding.needs_graph

    def scale_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates multiplied by :attr:`spatial_scale` per axis (unchanged without one)."""
        if self.spatial_scale is None:
            return coords
        return coords * torch.tensor(self.spatial_scale, device=coords.device, dtype=coords.dtype)

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell ``log1p(x / library * target_sum)`` and the library sizes ``(n, 1)``."""
        library = x.sum(-1, keepdim=True)
        return log_normalize(x, self.target_sum, library=library), library

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "coords": tensors[SPATIAL_KEY],
            "batch_index": None if batch is None else batch.squeeze(-1).long(),
            "pe_features": tensors.get(PE_FEATURES_KEY),
        }

    def bilevel_mask(self, n_cells: int, n_genes: int, device: torch.device) -> torch.Tensor:
        """Boolean ``(n_cells, n_genes)`` mask, True where an entry is hidden (paper Eq. 24).

        Exactly ``floor(theta * n)`` cells are selected; each gene of a selected cell is hidden
        with probability ``gamma``. At least one entry is always hidden.
        """
        n_sel = max(int(self.cell_mask_rate * n_cells), 1)
        selected = torch.randperm(n_cells, device=device)[:n_sel]
        mask = torch.zeros(n_cells, n_genes, dtype=torch.bool, device=device)
        mask[selected] = torch.rand(n_sel, n_genes, device=device) < self.gene_mask_rate
        if not mask.any():
            mask[selected[0], torch.randint(n_genes, (1,), device=device)] = True
        return mask

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        pe_features: torch.Tensor | None = None,
        mask_input: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """Encode one group of cells.

        Parameters
        ----------
        x
            ``(n, genes)`` counts of the group's cells.
        coords
            ``(n, 2)`` or ``(n, 3)`` coordinates (scaled by :attr:`spatial_scale` here).
        batch_index
            ``(n,)`` batch codes, if batches are registered.
        pe_features
            ``(n, k)`` precomputed graph features, if the positional encoding needs them.
        mask_input
            Apply bi-level masking (and, in training mode, DropNode). Training and validation
            losses mask; prediction does not.

        """
        coords = self.scale_coords(coords)
        keep = None
        if self.training and self.drop_node_rate > 0 and x.shape[0] > 2:
            keep = torch.rand(x.shape[0], device=x.device) >= self.drop_node_rate
            if keep.sum() < 2:
                keep[:2] = True
            x, coords = x[keep], coords[keep]
            batch_index = None if batch_index is None else batch_index[keep]
            pe_features = None if pe_features is None else pe_features[keep]
        xn, library = self.normalize(x)
        mask = None
        x_in = xn
        if mask_input:
            mask = self.bilevel_mask(*xn.shape, xn.device)
            selected = mask.any(-1, keepdim=True)
            # mean-preserving rescale of the kept genes of selected cells (inverted dropout)
            scale = torch.where(selected, 1.0 / (1.0 - self.gene_mask_rate), 1.0)
            x_in = xn.masked_fill(mask, 0.0) * scale
        edge_index = knn_graph(coords, self.n_neighbors) if self.needs_graph else None
        h = self.embed(x_in)
        if self.batch_embed is not None and batch_index is not None:
            h = h + self.batch_embed(batch_index)
        h = h + self.pos_encoding(h, normalize_coords(coords), edge_index, pe_features)
        h = self.input_dropout(h)
        h = self.encoder(h, edge_index) if self.encoder_type == "gat" else self.encoder(h)
        qz_m = self.z_mean(h)
        qz_v = z = None
        if self.variational:
            qz_v = torch.exp(self.z_logvar(h).clamp(-15, 15))
            z = Normal(qz_m, qz_v.sqrt()).rsample() if self.training else qz_m
        else:
            z = qz_m
        return {
            "z": z,
            "qz_m": qz_m,
            "qz_v": qz_v,
            "x": x,
            "xn": xn,
            "library": library,
            "mask": mask,
            "keep": keep,
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {"z": inference_outputs["z"], "library": inference_outputs["library"]}

    @auto_move_data
    def generative(self, z: torch.Tensor, library: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode latents: ``xhat`` (log-normalised) for MSE, ZINB parameters for counts."""
        if self.likelihood == "mse":
            return {"xhat": self.decoder(z)}
        return self.decoder(z, library)

    def predict(self, generative_outputs: dict, library: torch.Tensor) -> torch.Tensor:
        """Imputed expression on the count scale of the input (``(n, genes)``)."""
        if self.likelihood == "mse":
            return torch.expm1(generative_outputs["xhat"]) * library / self.target_sum
        return generative_outputs["mu"]

    def loss(
        self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0
    ) -> LossOutput:
        """Reconstruction error on the hidden entries (or hidden cells), plus KL for the VAE."""
        mask = inference_outputs["mask"]
        if mask is None:
            raise RuntimeError("the loss needs masked inputs; call inference with mask_input=True.")
        if self.loss_on == "masked_cells":
            mask = mask.any(-1, keepdim=True).expand_as(mask)
        if self.likelihood == "mse":
            err = (generative_outputs["xhat"] - inference_outputs["xn"]) ** 2
        else:
            err = zinb_nll(
                inference_outputs["x"],
                generative_outputs["mu"],
                generative_outputs["theta"],
                generative_outputs["pi_logit"],
            )
        err = err * mask
        n_masked = mask.sum().clamp_min(1)
        recon = err.sum() / n_masked
        per_cell = err.sum(-1) * (mask.shape[0] * mask.shape[1] / n_masked) / mask.shape[1]
        kl = torch.zeros((), device=err.device)
        kl_local = torch.zeros_like(per_cell)
        if self.variational:
            qz = Normal(inference_outputs["qz_m"], inference_outputs["qz_v"].sqrt())
            pz = Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))
            kl_local = kl_divergence(qz, pz).sum(-1)
            kl = kl_local.mean()
        metrics = {}
        if self.likelihood == "mse":
            metrics["masked_rmse"] = recon.detach().sqrt()
        return LossOutput(
            loss=recon + kl_weight * kl,
            reconstruction_loss=per_cell,
            kl_local=kl_local,
            n_obs_minibatch=mask.shape[0],
            extra_metrics=metrics,
        )

    def sample(self, *args, **kwargs):  # pragma: no cover - not a generative sampler
        """Not supported: SpaFormer is an imputation autoencoder."""
        raise NotImplementedError("SpaFormer does not sample.")
