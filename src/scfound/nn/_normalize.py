"""Library-size normalisation of count tensors inside the models' modules."""

from __future__ import annotations

import torch


def log_normalize(
    x: torch.Tensor,
    target_sum: float,
    *,
    library: torch.Tensor | None = None,
    min_library: float = 1e-8,
    log: bool = True,
) -> torch.Tensor:
    """``log1p(x / library * target_sum)`` per cell (row): the torch twin of the numpy one.

    The numpy/scipy version, for matrices outside the models, is
    :func:`scfound._normalize.log_normalize`.

    Parameters
    ----------
    x
        ``(..., n_cells, n_genes)`` non-negative counts.
    target_sum
        Total of every cell after scaling.
    library
        ``(..., n_cells, 1)`` library sizes; default the sums of ``x`` over genes.
    min_library
        Libraries are clamped below at this, so that empty cells give 0, not NaN (stAI's
        reference transform uses 1).
    log
        Apply ``log1p`` after scaling.

    Returns
    -------
    Tensor of ``x``'s shape.
    """
    if library is None:
        library = x.sum(-1, keepdim=True)
    out = x / library.clamp_min(min_library) * target_sum
    return torch.log1p(out) if log else out
