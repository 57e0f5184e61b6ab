"""stAI module: two encoder/decoder pairs in one latent space, one submodel per gene fold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.nn import functional as F

from scfound._constants import TARGET_SUM
from scfound.nn import GATConv, log_normalize
from scfound.nn._alignment import column_pearson, cross_correlation, knn_softmax, mmd_rbf

SPATIAL_X = "spatial_x"
SPATIAL_EDGES = "spatial_edges"
REFERENCE_X = "reference_x"
REFERENCE_LIBRARY = "reference_library"
REFERENCE_LABELS = "reference_labels"
#: z-scores are clipped to +-this (scanpy's ``scale(max_value=10)``)
MAX_Z = 10.0
LOSS_TERMS = ("reconstruction", "mmd", "consistency", "imputation", "classification", "gene")
#: values z-scored per gene: counts as they are, their ``log1p``, or ``log1p`` of counts per 1e4
TRANSFORMS = ("scale", "log1p", "cp10k_log1p")


def transform(counts: torch.Tensor, how: str, library: torch.Tensor | None = None) -> torch.Tensor:
    """``counts`` (``"scale"``), ``log1p(counts)`` or ``log1p(counts / library * 1e4)``."""
    if how == "log1p":
        return torch.log1p(counts)
    if how == "cp10k_log1p":
        return log_normalize(counts, TARGET_SUM, library=library, min_library=1.0)
    return counts


def mlp(n_in: int, n_hidden: int, n_out: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear - ReLU - Dropout - Linear``."""
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out)
    )


class SpatialEncoder(nn.Module):
    """``z = W (h + LeakyReLU(GAT(h, G))) + b`` with ``h = MLP(x)``: one graph-attention hop."""

    def __init__(self, n_input: int, n_hidden: int, n_latent: int, dropout: float = 0.0):
        super().__init__()
        self.pre = mlp(n_input, n_hidden, n_latent, dropout)
        self.gat = GATConv(n_latent, n_latent, n_heads=1)
        self.dropout = nn.Dropout(dropout)
        self.post = nn.Linear(n_latent, n_latent)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Encode ``(n, n_input)`` spatial cells on their neighbour graph."""
        h = self.pre(x)
        return self.post(h + self.dropout(F.leaky_relu(self.gat(h, edge_index), 0.01)))


def _subsample(z: torch.Tensor, n: int | None) -> torch.Tensor:
    """At most ``n`` random rows of ``z`` (all of them when ``n`` is None or larger)."""
    if n is None or z.shape[0] <= n:
        return z
    return z[torch.randperm(z.shape[0], device=z.device)[:n]]


class STAISubmodel(nn.Module):
    """One gene fold: encoders, decoders and classifier over the fold's training genes."""

    def __init__(self, n_input: int, n_hidden: int, n_latent: int, n_labels: int, dropout: float):
        super().__init__()
        self.spatial_encoder = SpatialEncoder(n_input, n_hidden, n_latent, dropout)
        self.spatial_decoder = mlp(n_latent, n_hidden, n_input)
        self.reference_encoder = mlp(n_input, n_hidden, n_latent, dropout)
        self.reference_decoder = mlp(n_latent, n_hidden, n_input)
        self.classifier = (
            nn.Sequential(
                nn.Linear(n_latent, n_hidden), nn.LeakyReLU(0.01), nn.Linear(n_hidden, n_labels)
            )
            if n_labels > 0
            else None
        )


class STAIModule(BaseModuleClass):
    """stAI over the genes shared by a spatial and a reference dataset.

    The shared genes are split into ``k`` folds. Submodel ``m`` reads the genes outside fold
    ``m`` (its *training genes*) and is supervised on fold ``m`` (its *calibration genes*): the
    spatial cells' calibration genes are imputed from the reference by a softmax over each
    spatial cell's ``topk`` nearest reference cells in latent space, and scored by
    ``1 - Pearson`` per gene. The ``k`` submodels are trained together on the same batches (their
    parameters are disjoint, so this equals training them one after another) and averaged at
    inference.

    Parameters
    ----------
    n_genes
        Number of shared genes.
    folds
        Calibration genes (column indices into the shared genes) of each submodel.
    spatial_stats, reference_stats
        ``(mean, std)`` per shared gene of the transformed spatial and reference data, for the
        per-gene z-scores.
    n_labels
        Reference cell types (0: no classifier).
    class_weights
        Cross-entropy weight per class (``None``: unweighted).
    n_hidden, n_latent, dropout
        Layer sizes (stAI: 64 / 16 / 0).
    topk
        Reference neighbours of the imputation softmax (stAI: 50; ``None`` = all).
    spatial_transform
        ``"scale"`` z-scores the spatial counts as they are (stAI); ``"log1p"`` takes ``log1p``
        first.
    reference_transform
        ``"cp10k_log1p"`` z-scores the ``log1p`` of the reference counts normalised to 1e4 per
        cell (stAI); ``"scale"`` and ``"log1p"`` as ``spatial_transform``.
    weights
        Weight of each loss term in :data:`LOSS_TERMS`.
    gene_loss
        ``"cosine"`` (released code: ``1 -`` column-wise cosine of the gene-gene correlation
        matrices) or ``"frobenius"`` (paper: their Frobenius distance).
    mmd_cells
        Cells of each dataset drawn at random per step for the MMD, whose cost is quadratic
        in the cells (``None``: every cell of the step).

    """

    def __init__(
        self,
        n_genes: int,
        folds: Sequence[Sequence[int]],
        spatial_stats: tuple[torch.Tensor, torch.Tensor],
        reference_stats: tuple[torch.Tensor, torch.Tensor],
        n_labels: int = 0,
        class_weights: torch.Tensor | None = None,
        n_hidden: int = 64,
        n_latent: int = 16,
        dropout: float = 0.0,
        topk: int | None = 50,
        spatial_transform: Literal["scale", "log1p"] = "scale",
        reference_transform: Literal["cp10k_log1p", "scale", "log1p"] = "cp10k_log1p",
        weights: dict[str, float] | None = None,
        gene_loss: Literal["cosine", "frobenius"] = "cosine",
        mmd_cells: int | None = 512,
    ):
        super().__init__()
        self.mmd_cells = mmd_cells
        self.n_genes, self.n_labels, self.topk = n_genes, n_labels, topk
        self.spatial_transform, self.gene_loss = spatial_transform, gene_loss
        self.reference_transform = reference_transform
        self.weights = {term: 0.0 for term in LOSS_TERMS} | dict(weights or {})
        for name, (mean, std) in [("spatial", spatial_stats), ("reference", reference_stats)]:
            self.register_buffer(f"{name}_mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer(f"{name}_std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.as_tensor(class_weights)
        )
        self.submodels = nn.ModuleList()
        for m, calibration in enumerate(folds):
            calib = torch.as_tensor(sorted(calibration), dtype=torch.long)
            train = torch.as_tensor(
                [g for g in range(n_genes) if g not in set(calibration)], dtype=torch.long
            )
            self.register_buffer(f"train_genes_{m}", train)
            self.register_buffer(f"calibration_genes_{m}", calib)
            self.submodels.append(STAISubmodel(len(train), n_hidden, n_latent, n_labels, dropout))

    def genes(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and calibration gene indices of submodel ``m``."""
        return getattr(self, f"train_genes_{m}"), getattr(self, f"calibration_genes_{m}")

    # ---------------------------------------------------------------- inputs
    def scale_spatial(self, counts: torch.Tensor) -> torch.Tensor:
        """Per-gene z-scores (clipped at +-10) of spatial counts (``log1p`` first if set)."""
        x = transform(counts, self.spatial_transform)
        return ((x - self.spatial_mean) / self.spatial_std).clamp(-MAX_Z, MAX_Z)

    def scale_reference(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Per-gene z-scores (clipped at +-10) of the transformed reference counts."""
        x = transform(counts, self.reference_transform, library)
        return ((x - self.reference_mean) / self.reference_std).clamp(-MAX_Z, MAX_Z)

    def encode(
        self, m: int, spatial: torch.Tensor | None, edges: torch.Tensor | None, reference=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Latents of scaled spatial cells (on ``edges``) and reference cells, submodel ``m``."""
        sub, (train, _) = self.submodels[m], self.genes(m)
        z_sp = None if spatial is None else sub.spatial_encoder(spatial[:, train], edges)
        z_ref = None if reference is None else sub.reference_encoder(reference[:, train])
        return z_sp, z_ref

    # ------------------------------------------------------- scvi interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "spatial_counts": tensors[SPATIAL_X],
            "edges": tensors[SPATIAL_EDGES],
            "reference_counts": tensors[REFERENCE_X],
            "library": tensors[REFERENCE_LIBRARY],
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z_spatial": inference_outputs["z_spatial"],
            "z_reference": inference_outputs["z_reference"],
        }

    @auto_move_data
    def inference(self, spatial_counts, edges, reference_counts, library) -> dict:
        """Scaled inputs and the latents of both datasets under every submodel."""
        xs = self.scale_spatial(spatial_counts)
        xr = self.scale_reference(reference_counts, library)
        latents = [self.encode(m, xs, edges, xr) for m in range(len(self.submodels))]
        return {
            "x_spatial": xs,
            "x_reference": xr,
            "z_spatial": [z for z, _ in latents],
            "z_reference": [z for _, z in latents],
        }

    @auto_move_data
    def generative(self, z_spatial: list, z_reference: list) -> dict:
        """Own and cross (coupled) decodings of both latents, per submodel."""
        out = {key: [] for key in ("sp_sp", "ref_ref", "sp_ref", "ref_sp")}
        for sub, zs, zr in zip(self.submodels, z_spatial, z_reference, strict=True):
            out["sp_sp"].append(sub.spatial_decoder(zs))
            out["ref_ref"].append(sub.reference_decoder(zr))
            out["sp_ref"].append(sub.reference_decoder(zs))  # spatial cells, reference decoder
            out["ref_sp"].append(sub.spatial_decoder(zr))
        return out

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Weighted sum of the six stAI losses, summed over the submodels."""
        xs, xr = inference_outputs["x_spatial"], inference_outputs["x_reference"]
        labels = tensors.get(REFERENCE_LABELS)
        totals = {term: xs.new_zeros(()) for term in LOSS_TERMS}
        for m in range(len(self.submodels)):
            train, calib = self.genes(m)
            zs, zr = inference_outputs["z_spatial"][m], inference_outputs["z_reference"][m]
            xs_t, xr_t = xs[:, train], xr[:, train]
            gen = {key: value[m] for key, value in generative_outputs.items()}
            totals["reconstruction"] = totals["reconstruction"] + (
                F.mse_loss(gen["sp_sp"], xs_t) + F.mse_loss(gen["ref_ref"], xr_t)
            )
            totals["consistency"] = totals["consistency"] + (
                (1 - F.cosine_similarity(gen["sp_ref"], xs_t, dim=1)).mean()
                + (1 - F.cosine_similarity(gen["ref_sp"], xr_t, dim=1)).mean()
            )
            if self.weights["mmd"]:
                totals["mmd"] = totals["mmd"] + mmd_rbf(
                    _subsample(zs, self.mmd_cells), _subsample(zr, self.mmd_cells)
                )
            weight, index = knn_softmax(zs, zr, self.topk)
            imputed = (weight.unsqueeze(-1) * xr[:, calib][index]).sum(1)
            totals["imputation"] = (
                totals["imputation"] + 1 - column_pearson(imputed, xs[:, calib]).mean()
            )
            if self.weights["gene"]:
                a_sp = cross_correlation(xs_t, imputed)
                a_ref = cross_correlation(xr_t, xr[:, calib])
                if self.gene_loss == "frobenius":
                    gene = torch.linalg.matrix_norm(a_sp - a_ref)
                else:
                    gene = 1 - F.cosine_similarity(a_sp, a_ref, dim=0).mean()
                totals["gene"] = totals["gene"] + gene
            sub = self.submodels[m]
            if sub.classifier is not None and labels is not None:
                known = labels.reshape(-1) >= 0
                if bool(known.any()):
                    ce = F.cross_entropy(
                        sub.classifier(zr[known]),
                        labels.reshape(-1)[known].long(),
                        weight=self.class_weights,
                    )
                    totals["classification"] = totals["classification"] + ce
        loss = sum(self.weights[t] * totals[t] for t in LOSS_TERMS)
        return LossOutput(
            loss=loss,
            reconstruction_loss=totals["reconstruction"].reshape(1).expand(xs.shape[0]),
            n_obs_minibatch=xs.shape[0],
            extra_metrics={f"loss_{t}": totals[t].detach() for t in LOSS_TERMS},
        )
