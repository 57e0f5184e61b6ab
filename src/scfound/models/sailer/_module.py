"""SAILER's torch module: a VAE on binarised accessibility, confounders given to the decoder."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

#: slope of the LeakyReLU after every hidden layer (the authors' 0.2)
NEGATIVE_SLOPE = 0.2

#: what the encoder may read (see :class:`SAILERModule`)
ENCODER_INPUTS = ("binary", "tfidf")


def mlp(
    sizes: Sequence[int],
    dropout_rate: float = 0.0,
    activation: Callable[[], nn.Module] | None = None,
) -> nn.Sequential:
    """``Linear -> BatchNorm1d -> activation (-> Dropout)`` for each consecutive pair of ``sizes``.

    Parameters
    ----------
    sizes
        Widths, input first.
    dropout_rate
        Dropout after every activation (0: none).
    activation
        Factory of the activation; default ``LeakyReLU(NEGATIVE_SLOPE)`` (SAILER's).

    Returns
    -------
    The layers, indexed ``Linear, BatchNorm1d, activation[, Dropout]`` per pair.
    """
    if activation is None:
        activation = partial(nn.LeakyReLU, NEGATIVE_SLOPE)
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), activation()]
        if dropout_rate > 0:
            layers.append(nn.Dropout(dropout_rate))
    return nn.Sequential(*layers)


def pairwise_gaussian_kl(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Mean over all ``B x B`` pairs of ``KL(N(mean_i, var_i) || N(mean_j, var_j))`` (diagonal).

    The mini-batch estimate of ``E_x KL(q(z|x) || q(z))`` of Moyer et al. (2018), an upper
    bound of the KL to the mini-batch's aggregate posterior (KL is convex in its second
    argument). Computed with matrix products, no ``B x B x d`` tensor.

    Parameters
    ----------
    mean, var
        ``(B, d)`` posterior means and variances.

    Returns
    -------
    A 0-d tensor (0 for a single cell).
    """
    inv = 1.0 / var
    log_var = torch.log(var)
    # sum_k var_ik / var_jk
    trace = var @ inv.T
    # sum_k (mean_ik - mean_jk)^2 / var_jk
    square = (mean**2) @ inv.T - 2.0 * mean @ (mean * inv).T + (mean**2 * inv).sum(1)[None, :]
    # sum_k log var_jk - log var_ik
    log_det = log_var.sum(1)[None, :] - log_var.sum(1)[:, None]
    kl = 0.5 * (trace + square + log_det - mean.shape[1])
    return kl.mean()


class InvariantBernoulliVAE(BaseModuleClass):
    """SAILER's invariant VAE on binarised accessibility, without its networks.

    What SAILER and SAILERX share: the Gaussian posterior ``q(z|x)`` of the binarised profile,
    the decoder's confounders ``c`` (standardised log depth, one-hot batch, standardised
    continuous covariates), the Bernoulli likelihood with a positive weight on the accessible
    entries, and the loss ``mean[(1 + lambda) BCE + beta KL(q(z|x) || p(z))] + beta lambda
    M_pair`` (per-cell form of SAILER's Eq. 2.5, :func:`pairwise_gaussian_kl` for ``M_pair``).
    A subclass builds ``encoder`` (profile -> hidden), ``mean_encoder`` and ``var_encoder``
    (hidden -> posterior) and ``decoder`` (``[z; c]`` -> logits), and registers the buffers
    ``cov_mean`` and ``cov_std`` when it has continuous covariates.

    Parameters
    ----------
    n_input
        Peaks.
    n_batch
        Batches (one-hot in ``c``; 1 adds nothing).
    n_continuous_cov
        Further continuous confounders.
    n_latent
        Latent dimensions.
    mi_weight
        ``lambda``, the weight of the mutual-information penalty.
    pos_weight
        Weight of the accessible (1) entries in the binary cross-entropy.
    """

    #: registry key of the peak counts
    x_key: str = REGISTRY_KEYS.X_KEY

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        n_continuous_cov: int,
        n_latent: int,
        mi_weight: float,
        pos_weight: float,
    ):
        super().__init__()
        self.n_input, self.n_batch, self.n_latent = n_input, n_batch, n_latent
        self.n_continuous_cov = n_continuous_cov
        self.mi_weight = float(mi_weight)
        self.n_confounders = 1 + (n_batch if n_batch > 1 else 0) + n_continuous_cov
        # data statistics, saved with the weights so that a loaded model standardises as trained
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))
        self.register_buffer("depth_mean", torch.tensor(0.0))
        self.register_buffer("depth_std", torch.tensor(1.0))

    # ------------------------------------------------------------------ inputs
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {"x": tensors[self.x_key]}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **kwargs
    ) -> dict:
        return {
            "z": inference_outputs["z"],
            "log_depth": inference_outputs["log_depth"],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
        }

    def confounders(
        self,
        log_depth: torch.Tensor,
        batch_index: torch.Tensor | None,
        cont_covs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's ``c``: standardised log depth, one-hot batch, standardised covariates."""
        parts = [((log_depth - self.depth_mean) / self.depth_std).reshape(-1, 1)]
        if self.n_batch > 1:
            parts.append(F.one_hot(batch_index.reshape(-1).long(), self.n_batch).float())
        if self.n_continuous_cov:
            parts.append((cont_covs.float() - self.cov_mean) / self.cov_std)
        return torch.cat(parts, dim=1)

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 profile the likelihood is of, peaks in the networks' order."""
        return (x > 0).float()

    def encoder_features(self, x: torch.Tensor, n_open: torch.Tensor) -> torch.Tensor:
        """What ``encoder`` reads of the binary profile ``x`` with ``n_open`` accessible peaks."""
        return x

    # ------------------------------------------------------------------ model
    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Posterior ``q(z|x)`` of the binarised profile; ``z`` is a reparameterised draw."""
        x = self.binarize(x)
        n_open = x.sum(1).clamp(min=1.0)
        hidden = self.encoder(self.encoder_features(x, n_open))
        qz_m = self.mean_encoder(hidden)
        qz_v = torch.exp(self.var_encoder(hidden).clamp(-15.0, 15.0)) + 1e-6
        # std = exp(log var / 2) in sampling and in the KL terms (the authors' samplers use
        # exp(log var))
        z = qz_m + qz_v.sqrt() * torch.randn_like(qz_m) if self.training else qz_m
        return {"qz_m": qz_m, "qz_v": qz_v, "z": z, "x": x, "log_depth": torch.log(n_open)}

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        log_depth: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits of ``p(x|z, c)``."""
        c = self.confounders(log_depth, batch_index, cont_covs)
        return {"px_logits": self.decoder(torch.cat([z, c], dim=1))}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Per-cell form of SAILER's Eq. 2.5 (mean over the mini-batch).

        ``(1 + lambda) * BCE + beta * KL(q(z|x) || p(z)) + beta * lambda * M_pair``, with the
        annealing weight ``beta`` (``kl_weight``) on both KL terms and the positive weight on
        the accessible entries only.
        """
        x = inference_outputs["x"]
        qz_m, qz_v = inference_outputs["qz_m"], inference_outputs["qz_v"]
        reconstruction = F.binary_cross_entropy_with_logits(
            generative_outputs["px_logits"], x, pos_weight=self.pos_weight, reduction="none"
        ).sum(1)
        kl_prior = 0.5 * (qz_v + qz_m**2 - 1.0 - torch.log(qz_v)).sum(1)
        mi = pairwise_gaussian_kl(qz_m, qz_v)
        lam = self.mi_weight
        loss = ((1.0 + lam) * reconstruction + kl_weight * kl_prior).mean() + kl_weight * lam * mi
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl_prior,
            extra_metrics={"mi_penalty": mi.detach(), "kl_weight": torch.as_tensor(kl_weight)},
        )

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Binary profiles drawn from the decoder at each cell's own confounders."""
        _, generative_outputs = self.forward(tensors, compute_loss=False)
        return torch.bernoulli(torch.sigmoid(generative_outputs["px_logits"]))


class SAILERModule(InvariantBernoulliVAE):
    """Mutual-information-penalised VAE of SAILER (Cao et al., 2021).

    An :class:`InvariantBernoulliVAE` with MLP networks. The encoder ``q(z|x)`` reads the
    binarised accessibility ``x`` only; the decoder ``p(x|z, c)`` reads ``z`` and the
    confounders ``c`` (standardised log read depth, one-hot batch, standardised continuous
    covariates) and returns the logits of a Bernoulli per peak.

    Parameters
    ----------
    n_input
        Peaks.
    n_batch
        Batches (one-hot in ``c``; 1 adds nothing).
    n_continuous_cov
        Further continuous confounders.
    n_hidden
        Widths of the hidden layers of the encoder; the decoder mirrors them (paper 1000, 100).
    n_latent
        Latent dimensions (paper 10).
    mi_weight
        ``lambda``, the weight of the mutual-information penalty (paper 1).
    pos_weight
        Weight of the accessible (1) entries in the binary cross-entropy.
    encoder_input
        What the encoder reads: ``"binary"`` (the paper), the 0/1 profile, or ``"tfidf"``,
        ``log1p(1e4 * x_ij / n_i * idf_j)`` with ``n_i`` the accessible peaks of the cell and
        ``idf_j = n_cells / (accessible cells of peak j)`` (the ``idf`` buffer, set from the data by
        the model). The likelihood is the Bernoulli of the binary profile either way.
    dropout_rate
        Dropout after every hidden layer of the encoder.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_continuous_cov: int = 0,
        n_hidden: Sequence[int] = (1000, 100),
        n_latent: int = 10,
        mi_weight: float = 1.0,
        pos_weight: float = 1.0,
        encoder_input: str = "binary",
        dropout_rate: float = 0.0,
    ):
        super().__init__(n_input, n_batch, n_continuous_cov, n_latent, mi_weight, pos_weight)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}.")
        if encoder_input not in ENCODER_INPUTS:
            raise ValueError(
                f"encoder_input must be one of {ENCODER_INPUTS}, got {encoder_input!r}."
            )
        self.encoder_input = encoder_input
        hidden = [int(h) for h in n_hidden]
        self.encoder = mlp([n_input, *hidden], dropout_rate)
        self.mean_encoder = nn.Linear(hidden[-1], n_latent)
        self.var_encoder = nn.Linear(hidden[-1], n_latent)
        self.decoder = nn.Sequential(
            mlp([n_latent + self.n_confounders, *hidden[::-1]]),
            nn.Linear(hidden[0], n_input),
        )
        self.register_buffer("idf", torch.ones(n_input))
        self.register_buffer("cov_mean", torch.zeros(n_continuous_cov))
        self.register_buffer("cov_std", torch.ones(n_continuous_cov))

    def encoder_features(self, x: torch.Tensor, n_open: torch.Tensor) -> torch.Tensor:
        """``x`` itself, or ``log1p(1e4 * x / n_open * idf)`` for ``encoder_input="tfidf"``."""
        if self.encoder_input == "tfidf":
            return torch.log1p(1e4 * x / n_open[:, None] * self.idf)
        return x
