"""Library-size normalisation of count matrices (numpy/scipy); one definition for all of scfound.

The torch counterpart, used inside the models' modules, is :func:`scfound.nn.log_normalize`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

Matrix = np.ndarray | sp.spmatrix


def library_size(X: Matrix, dtype: type | None = None) -> np.ndarray:
    """Total of every cell (row) of ``X``, as a 1-D array.

    Parameters
    ----------
    X
        Cells x genes matrix (dense or sparse).
    dtype
        Dtype of the result; default that of the row sums of ``X``.

    Returns
    -------
    ``(n_cells,)`` array of row totals.
    """
    return np.asarray(X.sum(axis=1), dtype=dtype).ravel()


def log_normalize(
    X: Matrix,
    target_sum: float,
    *,
    library: np.ndarray | None = None,
    min_library: float = 0.0,
    log: bool = True,
) -> Matrix:
    """Scale every cell (row) of ``X`` to ``target_sum`` total counts, then apply ``log1p``.

    Row ``i`` is multiplied by ``target_sum / max(library[i], min_library)``; a cell whose
    (clipped) library is 0 gets 0 everywhere.

    Parameters
    ----------
    X
        Cells x genes matrix, non-negative; dense arrays stay dense, sparse matrices become CSR
        (same non-zero pattern).
    target_sum
        Total of every cell after scaling (e.g. :data:`scfound._constants.TARGET_SUM`).
    library
        Library size of every cell; default the row sums of ``X``. Pass the totals over all
        genes to normalise a subset of the genes as in the whole matrix.
    min_library
        Libraries below this are raised to it (stAI's reference and the k-NN smoothing use 1,
        so that counts of a cell with less than one count in all are not inflated).
    log
        Apply ``log1p`` after scaling (``False``: counts per ``target_sum``).

    Returns
    -------
    Matrix of ``X``'s shape and kind. Its dtype follows ``X`` and ``library`` (``float32``
    counts with a ``float32`` library stay ``float32``).

    Examples
    --------
    >>> import numpy as np
    >>> from scfound._normalize import log_normalize
    >>> log_normalize(np.array([[2.0, 6.0], [0.0, 0.5]]), 8.0, min_library=1.0, log=False)
    array([[2., 6.],
           [0., 4.]])
    """
    library = library_size(X) if library is None else np.asarray(library).ravel()
    if min_library > 0:
        library = np.maximum(library, min_library)
    scale = np.divide(
        target_sum,
        library,
        out=np.zeros(library.shape, dtype=np.result_type(library.dtype, np.float32)),
        where=library > 0,
    )
    if sp.issparse(X):
        out = sp.csr_matrix(X, copy=True)
        out.data = out.data * np.repeat(scale, np.diff(out.indptr))
        if log:
            out.data = np.log1p(out.data)
        return out
    out = np.asarray(X) * scale[:, None]
    return np.log1p(out) if log else out
