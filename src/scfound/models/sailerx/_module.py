"""SAILERX's torch module: SAILER's invariant VAE with chromosome-wise networks and an RNA prior."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput
from torch import nn

from ..sailer._module import InvariantBernoulliVAE, mlp

#: per-cell tensors SAILERX's loader adds to every minibatch (see ``_data.CellDataLoader``)
REFERENCE_KEY = "rna_reference"
PAIRED_KEY = "paired"
WEIGHT_KEY = "alignment_weight"


def _block(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear -> BatchNorm1d -> PReLU`` for each consecutive pair of ``sizes``."""
    return mlp(sizes, activation=nn.PReLU)


def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(b, b)`` cosine similarities between the rows of ``x`` (a zero row gives 0)."""
    unit = x / x.norm(dim=1, keepdim=True).clamp(min=eps)
    return unit @ unit.T


def local_structure_loss(
    reference: torch.Tensor,
    latent: torch.Tensor,
    weight: torch.Tensor,
    batch_index: torch.Tensor | None = None,
    paired: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAILERX's cross-modal term: disagreement of two cosine-similarity matrices.

    ``sum_{j,k} m_jk w_j w_k (S^g_jk - S^p_jk)^2 / b``, with ``S^g`` the cosine similarities
    of the RNA reference embeddings (constant), ``S^p`` those of the ATAC posterior means,
    ``w`` the per-cell weights and ``m_jk = 1`` when cells ``j`` and ``k`` both have RNA and
    are in the same batch ("within-batch" similarity matrices; cells without RNA take no
    part). Divided by the ``b`` cells of the minibatch, so that it is a per-cell quantity like
    the other terms of the loss (the authors' code sums over cells and pairs).

    Parameters
    ----------
    reference
        ``(b, d_g)`` RNA reference embeddings (rows of unpaired cells are ignored).
    latent
        ``(b, d)`` posterior means of the ATAC encoder.
    weight
        ``(b,)`` per-cell weights ``gamma``.
    batch_index
        ``(b,)`` or ``(b, 1)`` batch codes; ``None``: one batch.
    paired
        ``(b,)`` 1 for cells with RNA, 0 without; ``None``: all paired.

    Returns
    -------
    A 0-d tensor.
    """
    b = latent.shape[0]
    mask = torch.ones(b, b, dtype=latent.dtype, device=latent.device)
    if paired is not None:
        p = paired.reshape(-1).to(latent.dtype)
        mask = mask * p[:, None] * p[None, :]
    if batch_index is not None:
        codes = batch_index.reshape(-1)
        mask = mask * (codes[:, None] == codes[None, :]).to(latent.dtype)
    w = weight.reshape(-1).to(latent.dtype)
    s_rna = cosine_similarity_matrix(reference.to(latent.dtype)).detach()
    s_atac = cosine_similarity_matrix(latent)
    return (mask * w[:, None] * w[None, :] * (s_rna - s_atac) ** 2).sum() / b


class ChromosomeEncoder(nn.Module):
    """One two-layer network per chromosome, outputs concatenated (BABEL's layout).

    Parameters
    ----------
    chrom_sizes
        Peaks of each chromosome, in the order of the (grouped) input columns.
    n_hidden
        Widths of the two layers of every per-chromosome network (authors: 64, 32).
    """

    def __init__(self, chrom_sizes: Sequence[int], n_hidden: Sequence[int] = (64, 32)):
        super().__init__()
        self.chrom_sizes = [int(s) for s in chrom_sizes]
        self.nets = nn.ModuleList(_block([size, *n_hidden]) for size in self.chrom_sizes)
        self.n_output = int(n_hidden[-1]) * len(self.chrom_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n_peaks)`` grouped by chromosome -> ``(b, n_hidden[-1] * n_chromosomes)``."""
        parts = torch.split(x, self.chrom_sizes, dim=1)
        return torch.cat([net(part) for net, part in zip(self.nets, parts, strict=True)], dim=1)


class ChromosomeDecoder(nn.Module):
    """Mirror of :class:`ChromosomeEncoder`: ``[z; c]`` -> per-chromosome logits.

    Parameters
    ----------
    n_input
        Width of ``[z; c]``.
    chrom_sizes
        Peaks of each chromosome.
    n_hidden
        Widths of the encoder's per-chromosome layers (mirrored here).
    """

    def __init__(self, n_input: int, chrom_sizes: Sequence[int], n_hidden: Sequence[int]):
        super().__init__()
        n_hidden = [int(h) for h in n_hidden]
        self.n_chunk = n_hidden[-1]
        self.shared = _block([n_input, self.n_chunk * len(chrom_sizes)])
        self.nets = nn.ModuleList(
            nn.Sequential(_block(n_hidden[::-1]), nn.Linear(n_hidden[0], int(size)))
            for size in chrom_sizes
        )

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        """``(b, n_input)`` -> ``(b, n_peaks)`` logits, peaks grouped by chromosome."""
        chunks = torch.split(self.shared(zc), self.n_chunk, dim=1)
        return torch.cat([net(c) for net, c in zip(self.nets, chunks, strict=True)], dim=1)


class SAILERXModule(InvariantBernoulliVAE):
    """SAILER's mutual-information-penalised VAE on ATAC, aligned to an RNA reference.

    An :class:`~scfound.models.sailer._module.InvariantBernoulliVAE` with chromosome-wise
    networks: the encoder reads the binarised peaks of a cell, grouped by chromosome (one
    network per chromosome); the decoder reconstructs them from ``z`` and the confounders ``c``
    (standardised log depth, one-hot batch). The loss is SAILER's (per-cell form) plus
    ``local_weight`` times the cross-modal term :func:`local_structure_loss` on the posterior
    means.

    Parameters
    ----------
    n_input
        Peaks.
    chrom_sizes
        Peaks per chromosome, in the grouped order (sum ``n_input``).
    n_batch
        Batches (one-hot in ``c``; 1 adds nothing).
    n_hidden
        Widths of every per-chromosome network (authors: 64, 32).
    n_latent
        Latent dimensions (paper: 50).
    mi_weight
        ``lambda``, weight of the mutual-information penalty (paper: 1).
    pos_weight
        Weight of the accessible entries in the binary cross-entropy.
    local_weight
        ``Gamma``, weight of the cross-modal term.
    """

    x_key = REGISTRY_KEYS.ATAC_X_KEY

    def __init__(
        self,
        n_input: int,
        chrom_sizes: Sequence[int],
        n_batch: int = 1,
        n_hidden: Sequence[int] = (64, 32),
        n_latent: int = 50,
        mi_weight: float = 1.0,
        pos_weight: float = 1.0,
        local_weight: float = 1.0,
    ):
        chrom_sizes = [int(s) for s in chrom_sizes]
        if sum(chrom_sizes) != n_input or min(chrom_sizes) < 1:
            raise ValueError(
                f"chrom_sizes must be positive and sum to n_input={n_input}, got {chrom_sizes}."
            )
        super().__init__(n_input, n_batch, 0, n_latent, mi_weight, pos_weight)
        self.local_weight = float(local_weight)
        self.encoder = ChromosomeEncoder(chrom_sizes, n_hidden)
        self.mean_encoder = nn.Linear(self.encoder.n_output, n_latent)
        self.var_encoder = nn.Linear(self.encoder.n_output, n_latent)
        self.decoder = ChromosomeDecoder(n_latent + self.n_confounders, chrom_sizes, n_hidden)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        #: column order that groups the peaks by chromosome (set by the model)
        self.register_buffer("peak_order", torch.arange(n_input))

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 profile with the peaks grouped by chromosome."""
        return (x[:, self.peak_order] > 0).float()

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """``mean[(1 + lambda) BCE + beta KL] + beta lambda M_pair + Gamma L_local``.

        SAILER's loss (:meth:`InvariantBernoulliVAE.loss
        <scfound.models.sailer._module.InvariantBernoulliVAE.loss>`) plus ``L_local``
        (:func:`local_structure_loss`), computed on the cells of the minibatch that have an RNA
        reference; a minibatch without the loader's reference tensors (or without paired cells)
        adds 0.
        """
        out = super().loss(tensors, inference_outputs, generative_outputs, kl_weight)
        qz_m = inference_outputs["qz_m"]
        if REFERENCE_KEY in tensors:
            local = local_structure_loss(
                tensors[REFERENCE_KEY],
                qz_m,
                tensors[WEIGHT_KEY],
                tensors.get(REGISTRY_KEYS.BATCH_KEY),
                tensors[PAIRED_KEY],
            )
        else:
            local = torch.zeros((), device=qz_m.device)
        out.loss = out.loss + self.local_weight * local
        out.extra_metrics["local_loss"] = local.detach()
        return out
