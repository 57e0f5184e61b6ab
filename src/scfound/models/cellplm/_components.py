"""CellPLM blocks: gene-expression embedder, Gaussian-mixture latent, batch-aware decoder."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from scfound.nn import CondPE, knn_graph, sinusoid_2d, sinusoid_3d

#: side of the integer grid that spatial coordinates are mapped to (the paper's [0, 100))
PE_GRID = 100


def make_norm(norm: str, dim: int) -> nn.Module:
    """``"groupnorm"`` (4 groups, the released checkpoint), ``"layernorm"`` or ``"none"``."""
    if norm == "groupnorm":
        return nn.GroupNorm(4, dim)
    if norm == "layernorm":
        return nn.LayerNorm(dim)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'groupnorm', 'layernorm' or 'none', got {norm!r}.")


def grid_cells(coords: torch.Tensor) -> torch.Tensor:
    """Grid cells ``[0, PE_GRID)`` per axis of one sample's ``(n, 2)`` or ``(n, 3)`` coordinates.

    Coordinates are min-max normalised per axis within the sample, then mapped with the released
    code's ``floor((c * 1.02 - 0.01) * 100)`` clipped to ``[0, 99]``. Each axis is normalised on
    its own, so the units of z relative to x and y do not matter here.
    """
    low = coords.amin(0)
    span = (coords.amax(0) - low).clamp_min(1e-12)
    unit = (coords - low) / span
    return torch.floor((unit * 1.02 - 0.01) * PE_GRID).long().clamp(0, PE_GRID - 1)


def grid_positions(coords: torch.Tensor) -> torch.Tensor:
    """Map one sample's ``(n, 2)`` coordinates to the cells of a ``PE_GRID x PE_GRID`` table.

    The grid cells are :func:`grid_cells`; the table index is ``x * 100 + y``.
    """
    cells = grid_cells(coords)
    return cells[:, 0] * PE_GRID + cells[:, 1]


class GeneExpressionEmbedder(nn.Module):
    """``E_i = sum_j x_ij h_j`` over a gene vocabulary, plus a positional encoding, projected.

    Parameters
    ----------
    n_vocab
        Size of the gene vocabulary.
    n_hidden
        Token width ``d``.
    dropout
        Dropout inside the projection.
    norm
        Normalisation at the end of the projection (see :func:`make_norm`).
    spatial_pe
        Add the 2-D sinusoid encoding for spatial cells and a learned shared token for the others
        (for 3-D coordinates, the 3-D sinusoid of the cells of a ``100 x 100 x 100`` grid).
        The authors' released code has this line commented out, so their checkpoint was trained
        without it; it is on by default for models trained with scfound.
    n_pe_neighbors
        With ``k > 0``, each spatial cell's token also gets a graph-attention summary of the
        tokens of its ``k`` nearest cells (:class:`~scfound.nn.CondPE`, SpaFormer's conditional
        positional encoding; not in CellPLM). Its projection starts at zero, so a pre-trained
        model that lacked it is unchanged until fine-tuning trains it.

    """

    def __init__(
        self,
        n_vocab: int,
        n_hidden: int,
        dropout: float = 0.2,
        norm: str = "groupnorm",
        spatial_pe: bool = True,
        n_pe_neighbors: int = 0,
    ):
        super().__init__()
        self.spatial_pe = spatial_pe
        self.n_pe_neighbors = n_pe_neighbors
        self.neighbour_pe = None
        if n_pe_neighbors > 0:
            self.neighbour_pe = CondPE(n_hidden)
            nn.init.zeros_(self.neighbour_pe.gat.lin.weight)
        self.gene_embedding = nn.Parameter(torch.randn(n_vocab, n_hidden) * 0.005)
        self.missing_pe = nn.Parameter(torch.randn(n_hidden) * 0.01)
        xs, ys = torch.meshgrid(torch.arange(PE_GRID), torch.arange(PE_GRID), indexing="ij")
        self.register_buffer("position_table", sinusoid_2d(xs.flatten(), ys.flatten(), n_hidden))
        self.projection = nn.Sequential(
            nn.Linear(n_hidden, n_hidden), nn.ReLU(), nn.Dropout(dropout), make_norm(norm, n_hidden)
        )

    def forward(
        self,
        x: torch.Tensor,
        gene_ids: torch.Tensor,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``(n, g)`` transformed expression of the vocabulary genes ``gene_ids``.

        ``coords`` holds the ``(n, 2)`` or ``(n, 3)`` coordinates of a spatial sample (``None``
        otherwise).
        """
        emb = self.gene_embedding.index_select(0, gene_ids)
        h = torch.sparse.mm(x, emb) if x.is_sparse or x.layout == torch.sparse_csr else x @ emb
        if self.neighbour_pe is not None and coords is not None:
            h = h + self.neighbour_pe(h, coords, knn_graph(coords, self.n_pe_neighbors))
        if self.spatial_pe:
            if coords is None:
                h = h + self.missing_pe
            elif coords.shape[-1] == 3:
                cells = grid_cells(coords)
                h = h + sinusoid_3d(cells[:, 0], cells[:, 1], cells[:, 2], h.shape[-1]).to(h)
            else:
                h = h + self.position_table[grid_positions(coords)]
        return self.projection(h)


class GaussianMixtureLatent(nn.Module):
    """Gaussian-mixture latent space with ``n_clusters`` components (CellPLM's GMVAE).

    ``q(y | h)`` is categorical over the components, ``q(z | h, y)`` Gaussian with mean and
    (softplus) variance from an MLP of ``[h, y]``, and the prior ``p(z | y)`` Gaussian with mean and
    variance linear in ``y``; ``p(y)`` is uniform. This is the parameterisation of the released
    checkpoint. Training draws ``y`` by a Gumbel-softmax sample and uses the closed-form KLs
    ``KL(q(z|h,y) || p(z|y)) + KL(q(y|h) || U)`` (the released code uses a one-sample Monte-Carlo
    estimate with a free-bits floor).

    At inference the embedding is deterministic: ``y`` is the most probable component and ``z``
    the posterior mean. The released code draws a hard Gumbel sample of ``y`` at inference, so its
    embeddings change from run to run; ``stochastic=True`` reproduces that (same random stream).
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        n_clusters: int = 16,
        n_hidden: int = 512,
        stochastic: bool = False,
    ):
        super().__init__()
        self.n_clusters = n_clusters
        self.stochastic = stochastic
        self.cluster_logits = nn.Linear(n_input, n_clusters)
        self.posterior = nn.Sequential(nn.Linear(n_input + n_clusters, n_hidden), nn.ReLU())
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_var = nn.Linear(n_hidden, n_latent)
        self.prior_mean = nn.Linear(n_clusters, n_latent)
        self.prior_var = nn.Linear(n_clusters, n_latent)

    def _cluster(self, logits: torch.Tensor) -> torch.Tensor:
        if self.training or self.stochastic:
            u = torch.rand_like(logits)
            y = torch.softmax(logits - torch.log(-torch.log(u + 1e-20) + 1e-20), dim=-1)
            if self.training:
                return y
        else:
            y = logits
        hard = F.one_hot(y.argmax(-1), self.n_clusters).to(logits.dtype)
        return hard

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior of ``(n, n_input)`` encoder states; ``z`` is sampled when training."""
        logits = self.cluster_logits(h)
        y = self._cluster(logits)
        hidden = self.posterior(torch.cat([h, y], dim=-1))
        qz_m = self.z_mean(hidden)
        out = {"cluster_logits": logits, "y": y, "qz_m": qz_m, "z": qz_m}
        if self.training or self.stochastic:  # the released code always draws z (kept in sync)
            qz_v = F.softplus(self.z_var(hidden))
            z = qz_m + torch.sqrt(qz_v + 1e-10) * torch.randn_like(qz_m)
            out["qz_v"] = qz_v
            if self.training:
                out["z"] = z
        return out

    def kl(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-cell ``KL(q(z|h,y) || p(z|y)) + KL(q(y|h) || Uniform)``."""
        y = out["y"]
        pm, pv = self.prior_mean(y), F.softplus(self.prior_var(y)) + 1e-8
        qm, qv = out["qz_m"], out["qz_v"] + 1e-8
        kl_z = 0.5 * (torch.log(pv / qv) + (qv + (qm - pm) ** 2) / pv - 1).sum(-1)
        log_q = F.log_softmax(out["cluster_logits"], dim=-1)
        kl_y = (log_q.exp() * log_q).sum(-1) + math.log(self.n_clusters)
        return kl_z + kl_y


class BatchAwareDecoder(nn.Module):
    """Per-cell decoder conditioned on sample (batch) and dataset embeddings.

    Hidden layers ``Linear - PReLU - Dropout - Norm``; after each, embeddings of the cell's batch
    and dataset (``Embedding - PReLU - Norm``) are added. A cell whose batch the model never saw
    (zero-shot, fine-tuning on new data) gets the **mean** of all batch embeddings, "the mixture of
    all pre-training batches" of the paper (the released code adds their sum;
    ``covariate_mixture="sum"`` reproduces it). The output goes through a 128-wide bottleneck to
    the vocabulary: log-normalised values (``likelihood="mse"``) or the log-mean of a negative
    binomial with gene-wise dispersion (``"nb"``; ``dispersion=True`` creates it).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 1024,
        n_layers: int = 2,
        n_batch: int = 0,
        n_dataset: int = 0,
        dropout: float = 0.2,
        norm: str = "groupnorm",
        covariate_mixture: str = "mean",
        n_bottleneck: int = 128,
        dispersion: bool = True,
    ):
        super().__init__()
        if covariate_mixture not in ("mean", "sum"):
            raise ValueError(
                f"covariate_mixture must be 'mean' or 'sum', got {covariate_mixture!r}."
            )
        self.covariate_mixture = covariate_mixture
        self.n_covariates = {"batch": n_batch, "dataset": n_dataset}
        self.layers = nn.ModuleList()
        self.covariates = nn.ModuleList()
        for i in range(n_layers - 1):
            self.layers.append(
                nn.Sequential(
                    nn.Linear(n_input if i == 0 else n_hidden, n_hidden),
                    nn.PReLU(),
                    nn.Dropout(dropout),
                    make_norm(norm, n_hidden),
                )
            )
            self.covariates.append(
                nn.ModuleDict(
                    {
                        name: nn.Sequential(
                            nn.Embedding(n, n_hidden), nn.PReLU(), make_norm(norm, n_hidden)
                        )
                        for name, n in self.n_covariates.items()
                        if n > 0
                    }
                )
            )
        width = n_hidden if n_layers > 1 else n_input
        self.bottleneck = nn.Linear(width, n_bottleneck)
        self.output = nn.Linear(n_bottleneck, n_output)
        self.log_dispersion = nn.Parameter(torch.randn(n_output)) if dispersion else None

    def _covariate(self, layer: nn.Sequential, index: torch.Tensor | None, n: int) -> torch.Tensor:
        emb, act, norm = layer
        if index is None:
            w = emb.weight.detach()
            mixed = w.sum(0) if self.covariate_mixture == "sum" else w.mean(0)
            return norm(act(mixed.unsqueeze(0))).expand(n, -1)
        return layer(index.reshape(-1).long())

    def forward(
        self,
        z: torch.Tensor,
        gene_ids: torch.Tensor,
        covariates: dict[str, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Decode ``(n, n_input)`` latents to ``(n, len(gene_ids))`` outputs for those genes.

        ``covariates`` maps ``"batch"``/``"dataset"`` to integer codes, or ``None`` for the mixture.
        """
        covariates = covariates or {}
        h = z
        for layer, cov in zip(self.layers, self.covariates, strict=True):
            h = layer(h)
            for name, emb in cov.items():
                h = h + self._covariate(emb, covariates.get(name), h.shape[0])
        h = F.relu(self.bottleneck(h))
        return F.linear(h, self.output.weight[gene_ids], self.output.bias[gene_ids])

    def dispersion(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """Gene-wise NB inverse dispersion ``theta`` (clamped to ``[1e-4, 1e4]``)."""
        return torch.exp(self.log_dispersion[gene_ids]).clamp(1e-4, 1e4)
