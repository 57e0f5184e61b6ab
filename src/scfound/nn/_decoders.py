"""Per-cell decoders: an MLP for log-normalised expression (MSE), a ZINB head for counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLPDecoder(nn.Module):
    """``Linear - PReLU - Dropout - Linear`` with a softplus output.

    The softplus keeps predictions of log-normalised expression non-negative while staying smooth
    at zero (the reference code's ReLU output has zero gradient for every negative pre-activation).
    """

    def __init__(self, n_in: int, n_out: int, n_hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, n_hidden), nn.PReLU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``(n, n_in) -> (n, n_out)`` non-negative values."""
        return F.softplus(self.net(z))


class ZINBDecoder(nn.Module):
    """Zero-inflated negative binomial head (SpaFormer Eq. 16-18).

    A hidden layer ``H`` gives ``pi = sigmoid(H W_pi)``, gene proportions ``softmax(H W_mu)``
    (times the cell's library size gives the mean ``mu``) and ``theta = exp(H W_theta)``.
    """

    def __init__(self, n_in: int, n_out: int, n_hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_in, n_hidden), nn.PReLU(), nn.Dropout(dropout))
        self.scale = nn.Linear(n_hidden, n_out)
        self.log_theta = nn.Linear(n_hidden, n_out)
        self.pi_logit = nn.Linear(n_hidden, n_out)

    def forward(self, z: torch.Tensor, library: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``mu``, ``theta`` and ``pi_logit`` for cells with ``library`` total counts."""
        h = self.hidden(z)
        mu = torch.softmax(self.scale(h), dim=-1) * library
        theta = torch.exp(self.log_theta(h).clamp(-10, 10))
        return {"mu": mu, "theta": theta, "pi_logit": self.pi_logit(h)}


def zinb_nll(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi_logit: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Element-wise negative log-likelihood of counts ``x`` under ZINB(mu, theta, pi) (Eq. 19)."""
    log_theta_mu = torch.log(theta + mu + eps)
    nb_zero = theta * (torch.log(theta + eps) - log_theta_mu)  # log NB(0)
    log_nb = -nb_nll(x, mu, theta, eps)
    # log pi = -softplus(-l); log(1 - pi) = -softplus(l)
    log_pi, log_1m_pi = -F.softplus(-pi_logit), -F.softplus(pi_logit)
    ll_zero = torch.logaddexp(log_pi, log_1m_pi + nb_zero)
    ll = torch.where(x < 0.5, ll_zero, log_1m_pi + log_nb)
    return -ll


def nb_nll(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Element-wise negative log-likelihood of counts ``x`` under NB(``mu``, ``theta``).

    ``mu`` is the mean and ``theta`` the inverse dispersion.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return -(
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
    )
