"""Graph inputs of ScMoGNN built from numpy/scipy: the feature-feature (pathway) graph.

The cell-feature bipartite graph needs no construction: it is the non-zero pattern of the
normalised source matrix of each minibatch, with the normalised values as edge weights (see
:class:`~scfound.models.scmognn._module.ScMoGNNModule`). The feature-feature graph is fixed and
built once here, from gene sets (a GMT file or a mapping), an edge list, or the data alone.

Every feature keeps at most ``max_neighbors`` neighbours, stored as a padded
``(n_features, max_neighbors)`` table of indices and weights (weight 0 = no edge), so that its
shape depends only on the settings and a saved model loads onto any data with the same features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: columns of the Gram matrix computed at once by :func:`cosine_neighbors`
_BLOCK = 512


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets of a GMT file: one set per line, ``name<TAB>description<TAB>gene...``.

    Parameters
    ----------
    path
        GMT file (e.g. MSigDB hallmark sets, or GO sets).

    Returns
    -------
    ``{set name: [genes]}``.

    Raises
    ------
    ValueError
        If a line has fewer than two fields or the file holds no set.
    """
    sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n\r").split("\t")
            if not fields or fields == [""]:
                continue
            if len(fields) < 2:
                raise ValueError(
                    f"{os.fspath(path)}, line {number}: a GMT line needs a set name, a "
                    f"description and genes separated by tabs; found {len(fields)} field(s)."
                )
            sets[fields[0]] = [g for g in fields[2:] if g]
    if not sets:
        raise ValueError(f"{os.fspath(path)} holds no gene set.")
    return sets


def _column_normalised(X: sp.spmatrix | np.ndarray) -> sp.csc_matrix:
    """Columns of ``X`` scaled to unit Euclidean norm (all-zero columns stay 0), CSC."""
    X = sp.csc_matrix(X, dtype=np.float32)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(0)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csc_matrix(X @ sp.diags(scale.astype(np.float32)))


def cosine_neighbors(
    X: sp.spmatrix | np.ndarray,
    max_neighbors: int,
    threshold: float,
    allowed: sp.spmatrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's most similar features by cosine over cells, as a padded table.

    Parameters
    ----------
    X
        Cells x features (normalised values).
    max_neighbors
        Neighbours kept per feature (the most similar ones).
    threshold
        Pairs with cosine ``<= threshold`` are dropped.
    allowed
        Features x features mask of the pairs that may be linked (gene sets); ``None``: any pair.

    Returns
    -------
    ``(index, weight)``, both ``(n_features, max_neighbors)``; unused slots have index 0 and
    weight 0.
    """
    Xn = _column_normalised(X)
    n = Xn.shape[1]
    index = np.zeros((n, max_neighbors), dtype=np.int64)
    weight = np.zeros((n, max_neighbors), dtype=np.float32)
    if max_neighbors == 0 or n < 2:
        return index, weight
    allowed = None if allowed is None else sp.csr_matrix(allowed)
    XnT = sp.csr_matrix(Xn.T)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        gram = np.asarray((XnT[start:stop] @ Xn).todense(), dtype=np.float32)
        rows = np.arange(stop - start)
        gram[rows, rows + start] = -np.inf
        if allowed is not None:
            mask = np.asarray(allowed[start:stop].todense()) > 0
            gram[~mask] = -np.inf
        gram[gram <= threshold] = -np.inf
        k = min(max_neighbors, n - 1)
        top = np.argpartition(-gram, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(gram, top, axis=1)
        order = np.argsort(-vals, axis=1)
        top, vals = np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)
        keep = np.isfinite(vals)
        index[start:stop, :k] = np.where(keep, top, 0)
        weight[start:stop, :k] = np.where(keep, vals, 0.0)
    return index, weight


def gene_set_mask(
    gene_sets: Mapping[str, Sequence[str]], features: Sequence[str]
) -> tuple[sp.csr_matrix, int]:
    """Features x features mask of the pairs that share a gene set, and the genes it covers.

    Genes are matched to ``features`` by exact name, then by upper-case name (human symbols).
    """
    names = pd.Index([str(f) for f in features])
    lookup = {name: i for i, name in enumerate(names)}
    upper = {name.upper(): i for i, name in reversed(list(enumerate(names)))}
    rows, cols = [], []
    for s, genes in enumerate(gene_sets.values()):
        found = {lookup.get(g, upper.get(str(g).upper())) for g in genes} - {None}
        cols.extend(found)
        rows.extend([s] * len(found))
    membership = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(gene_sets), len(names))
    )
    covered = int((np.asarray(membership.sum(0)).ravel() > 0).sum())
    mask = (membership.T @ membership).tocsr()
    mask.setdiag(0)
    mask.eliminate_zeros()
    return mask, covered


def edge_list_mask(edges: pd.DataFrame, features: Sequence[str]) -> tuple[sp.csr_matrix, int]:
    """Features x features mask of the pairs of an edge list (first two columns, both ways)."""
    names = pd.Index([str(f) for f in features])
    a = names.get_indexer(edges.iloc[:, 0].astype(str))
    b = names.get_indexer(edges.iloc[:, 1].astype(str))
    keep = (a >= 0) & (b >= 0) & (a != b)
    a, b = a[keep], b[keep]
    n = len(names)
    mask = sp.csr_matrix(
        (np.ones(2 * len(a), dtype=np.float32), (np.r_[a, b], np.r_[b, a])), shape=(n, n)
    )
    covered = len(np.unique(np.r_[a, b]))
    return mask, covered


def read_feature_graph(
    spec: str | os.PathLike | Mapping[str, Sequence[str]], features: Sequence[str]
) -> tuple[sp.csr_matrix, int, str]:
    """The allowed-pairs mask of a ``feature_graph`` argument (a path or a mapping of sets).

    Returns
    -------
    ``(mask, number of features covered, description)``.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError
        If the argument has another type, or no pair of its features is among ``features``.
    """
    if isinstance(spec, Mapping):
        mask, covered = gene_set_mask(spec, features)
        what = f"{len(spec)} gene sets"
    elif isinstance(spec, str | os.PathLike):
        path = os.fspath(spec)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"feature_graph={path!r}: no such file (expected a GMT file of gene sets or a "
                "tab/comma-separated edge list with two columns of feature names)."
            )
        if path.endswith(".gmt"):
            sets = read_gmt(path)
            mask, covered = gene_set_mask(sets, features)
            what = f"{len(sets)} gene sets of {os.path.basename(path)}"
        else:
            sep = "," if path.endswith(".csv") else "\t"
            edges = pd.read_csv(path, sep=sep)
            if edges.shape[1] < 2:
                raise ValueError(
                    f"feature_graph={path!r}: an edge list needs two columns of feature names; "
                    f"found {edges.shape[1]}."
                )
            mask, covered = edge_list_mask(edges, features)
            what = f"edge list {os.path.basename(path)}"
    else:
        raise ValueError(
            "feature_graph must be 'auto', None, a path (GMT gene sets or an edge list) or a "
            f"dict of gene sets; got {type(spec).__name__}."
        )
    if mask.nnz == 0:
        raise ValueError(
            f"feature_graph ({what}) links no two of the {len(features)} source features: "
            "none of its names match the source var_names (e.g. gene symbols vs Ensembl IDs)."
        )
    return mask, covered, what


def feature_graph_summary(index: np.ndarray, weight: np.ndarray) -> dict[str, Any]:
    """Edges and features with at least one neighbour in a padded neighbour table."""
    linked = weight > 0
    return {"n_edges": int(linked.sum()), "n_linked_features": int(linked.any(1).sum())}
