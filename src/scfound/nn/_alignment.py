"""Losses and weights that align two datasets in one latent space (stAI, gimVI-style models)."""

from __future__ import annotations

import torch

#: Bandwidth multipliers of the multi-kernel RBF MMD (five kernels, 2^-2 .. 2^2).
MMD_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Maximum mean discrepancy between two samples under a sum of five RBF kernels.

    The kernels ``exp(-d^2 / (s * m))`` share a data-driven bandwidth ``s``, the mean off-diagonal
    squared distance of the pooled sample (held constant for the gradient), with multipliers
    ``m`` in :data:`MMD_MULTIPLIERS`. The estimate is the biased V-statistic
    ``mean K_xx - 2 mean K_xy + mean K_yy``. Because the multipliers are powers of two, the five
    kernels are one exponential and four squarings.

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` samples.

    Returns
    -------
    Scalar tensor.
    """
    u = torch.cat([x, y])
    n = u.shape[0]
    d2 = squared_distances(u, u)
    bandwidth = d2.detach().sum() / max(n * n - n, 1)
    base = torch.exp(-d2 / (bandwidth * MMD_MULTIPLIERS[-1]).clamp_min(1e-12))
    kernel, power = base, base
    for _ in MMD_MULTIPLIERS[:-1]:
        power = power * power  # exp(-d2 / (s * m / 2)) = exp(-d2 / (s * m)) ** 2
        kernel = kernel + power
    nx = x.shape[0]
    return kernel[:nx, :nx].mean() - 2 * kernel[:nx, nx:].mean() + kernel[nx:, nx:].mean()


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared Euclidean distances, as matrix products (``cdist``'s gradient is slow)."""
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T
    return d2.clamp_min(0.0)


def _standardize(a: torch.Tensor, eps: float) -> torch.Tensor:
    """Columns centred and divided by ``sqrt(var + eps**2)``.

    ``eps`` goes under the root: ``sqrt(var) + eps`` has an infinite gradient at a constant
    column (``var = 0``), and ``0 * inf`` turned a whole network's gradients into NaN.
    """
    centred = a - a.mean(0, keepdim=True)
    return centred / (centred.pow(2).mean(0, keepdim=True) + eps * eps).sqrt()


def column_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pearson correlation of matching columns of ``a`` and ``b`` (both ``(n, g)``) over rows."""
    return (_standardize(a, eps) * _standardize(b, eps)).mean(0)


def cross_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pearson correlations between every column of ``a`` ``(n, g)`` and of ``b`` ``(n, h)``."""
    return _standardize(a, eps).T @ _standardize(b, eps) / a.shape[0]


def knn_softmax(
    query: torch.Tensor, reference: torch.Tensor, k: int | None, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of negative Euclidean distances over each query's ``k`` nearest reference rows.

    Parameters
    ----------
    query, reference
        ``(n, d)`` and ``(m, d)`` latent vectors.
    k
        Neighbours per query row; ``None`` (or ``k >= m``) uses every reference row.
    temperature
        The distances are divided by it: below 1 the weights favour the nearest rows more.

    Returns
    -------
    ``(weights, index)``, both ``(n, k)``: the rows of ``weights`` sum to one and
    ``index`` names the reference rows they apply to.
    """
    if k is None or k >= reference.shape[0]:
        dist = squared_distances(query, reference).add(1e-12).sqrt()
        index = torch.arange(reference.shape[0], device=query.device).expand(query.shape[0], -1)
        return torch.softmax(-dist / temperature, dim=1), index
    with torch.no_grad():  # select without a graph, then differentiate the k distances only
        distances = squared_distances(query, reference)
        index = distances.topk(k, dim=1, largest=False, sorted=False).indices
    dist = (query.unsqueeze(1) - reference[index]).pow(2).sum(-1).add(1e-12).sqrt()
    return torch.softmax(-dist / temperature, dim=1), index
