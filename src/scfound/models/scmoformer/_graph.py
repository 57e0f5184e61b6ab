"""Prior graphs of ScMoFormer built from numpy/scipy: gene-gene, protein-protein, gene-protein.

Every graph is stored as a padded ``(n_nodes, width)`` table of neighbour indices and weights
(weight 0 = no edge, the layout of :mod:`scfound.models.scmognn._graph`), so that the module's
buffers have shapes fixed by the settings and a saved model loads onto any data with the same
features.

* gene-gene and protein-protein: an edge list (two columns of names, an optional third column
  of non-negative weights, e.g. STRING's combined score), gene sets (GMT file or a dict; pairs
  within a set weighted by co-expression), or ``"auto"``: each node's most co-expressed nodes
  over the reference cells (the data-only replacement of STRING, spec section 5);
* gene-protein "encodes" links: a protein is linked to the genes that code for it, matched by
  symbol (the name, its part before ``_``, an alias of :data:`PROTEIN_ALIASES`, or a mapping the
  user passes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..scmognn._graph import cosine_neighbors, gene_set_mask, read_gmt

#: most genes one protein is linked to
MAX_LINKS = 4

#: gene symbols of common antibody targets whose name is not their gene's symbol (CD antigens,
#: isoforms and complexes); a protein not listed here is matched by its own name
PROTEIN_ALIASES: dict[str, tuple[str, ...]] = {
    "CD2": ("CD2",),
    "CD3": ("CD3E", "CD3D", "CD3G"),
    "CD8": ("CD8A", "CD8B"),
    "CD8A": ("CD8A",),
    "CD11A": ("ITGAL",),
    "CD11B": ("ITGAM",),
    "CD11C": ("ITGAX",),
    "CD13": ("ANPEP",),
    "CD15": ("FUT4",),
    "CD16": ("FCGR3A", "FCGR3B"),
    "CD18": ("ITGB2",),
    "CD20": ("MS4A1",),
    "CD21": ("CR2",),
    "CD23": ("FCER2",),
    "CD25": ("IL2RA",),
    "CD26": ("DPP4",),
    "CD29": ("ITGB1",),
    "CD31": ("PECAM1",),
    "CD32": ("FCGR2A", "FCGR2B"),
    "CD35": ("CR1",),
    "CD39": ("ENTPD1",),
    "CD41": ("ITGA2B",),
    "CD42B": ("GP1BA",),
    "CD45": ("PTPRC",),
    "CD45RA": ("PTPRC",),
    "CD45RO": ("PTPRC",),
    "CD49A": ("ITGA1",),
    "CD49B": ("ITGA2",),
    "CD49D": ("ITGA4",),
    "CD49F": ("ITGA6",),
    "CD54": ("ICAM1",),
    "CD56": ("NCAM1",),
    "CD57": ("B3GAT1",),
    "CD62L": ("SELL",),
    "CD62P": ("SELP",),
    "CD64": ("FCGR1A",),
    "CD66B": ("CEACAM8",),
    "CD71": ("TFRC",),
    "CD73": ("NT5E",),
    "CD79B": ("CD79B",),
    "CD85J": ("LILRB1",),
    "CD88": ("C5AR1",),
    "CD94": ("KLRD1",),
    "CD95": ("FAS",),
    "CD103": ("ITGAE",),
    "CD105": ("ENG",),
    "CD107A": ("LAMP1",),
    "CD112": ("NECTIN2",),
    "CD115": ("CSF1R",),
    "CD119": ("IFNGR1",),
    "CD122": ("IL2RB",),
    "CD123": ("IL3RA",),
    "CD124": ("IL4R",),
    "CD127": ("IL7R",),
    "CD134": ("TNFRSF4",),
    "CD137": ("TNFRSF9",),
    "CD141": ("THBD",),
    "CD142": ("F3",),
    "CD146": ("MCAM",),
    "CD152": ("CTLA4",),
    "CD154": ("CD40LG",),
    "CD155": ("PVR",),
    "CD158": ("KIR2DL1",),
    "CD158B": ("KIR2DL3",),
    "CD158E1": ("KIR3DL1",),
    "CD161": ("KLRB1",),
    "CD162": ("SELPLG",),
    "CD169": ("SIGLEC1",),
    "CD172A": ("SIRPA",),
    "CD192": ("CCR2",),
    "CD194": ("CCR4",),
    "CD195": ("CCR5",),
    "CD196": ("CCR6",),
    "CD197": ("CCR7",),
    "CD223": ("LAG3",),
    "CD224": ("GGT1",),
    "CD268": ("TNFRSF13C",),
    "CD270": ("TNFRSF14",),
    "CD272": ("BTLA",),
    "CD273": ("PDCD1LG2",),
    "CD278": ("ICOS",),
    "CD279": ("PDCD1",),
    "PD-1": ("PDCD1",),
    "CD303": ("CLEC4C",),
    "CD304": ("NRP1",),
    "CD314": ("KLRK1",),
    "CD319": ("SLAMF7",),
    "CD328": ("SIGLEC7",),
    "CD335": ("NCR1",),
    "CD352": ("SLAMF6",),
    "CD357": ("TNFRSF18",),
    "FCERIA": ("FCER1A",),
    "HLA-A-B-C": ("HLA-A", "HLA-B", "HLA-C"),
    "HLA-DR": ("HLA-DRA",),
    "IGD": ("IGHD",),
    "IGM": ("IGHM",),
    "INTEGRINB7": ("ITGB7",),
    "LOX-1": ("OLR1",),
    "PODOPLANIN": ("PDPN",),
}


# ---------------------------------------------------------------------------- padded tables
def padded_table(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``width`` heaviest edges as a padded ``(n, width)`` index and weight table.

    Duplicate ``(row, col)`` pairs keep their largest weight; self-loops are dropped.
    """
    index = np.zeros((n, width), dtype=np.int64)
    weight = np.zeros((n, width), dtype=np.float32)
    keep = (rows != cols) & (weights > 0)
    if width == 0 or not keep.any():
        return index, weight
    frame = pd.DataFrame({"r": rows[keep], "c": cols[keep], "w": weights[keep]})
    frame = frame.groupby(["r", "c"], as_index=False)["w"].max()
    frame = frame.sort_values(["r", "w"], ascending=[True, False])
    frame["slot"] = frame.groupby("r").cumcount()
    frame = frame[frame["slot"] < width]
    index[frame["r"], frame["slot"]] = frame["c"]
    weight[frame["r"], frame["slot"]] = frame["w"]
    return index, weight


def table_edges(index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``(2, n_edges)`` (row, neighbour) pairs of a padded table (both directions kept)."""
    rows, slots = np.nonzero(weight > 0)
    return np.stack([rows, index[rows, slots]])


def table_summary(index: np.ndarray, weight: np.ndarray) -> dict[str, int]:
    """Edges and nodes with at least one neighbour in a padded table."""
    linked = weight > 0
    return {"n_edges": int(linked.sum()), "n_linked": int(linked.any(1).sum())}


# ---------------------------------------------------------------------------- edge lists
def read_edge_list(
    edges: str | os.PathLike | pd.DataFrame, names: Sequence[str], argument: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Rows, columns and weights of an edge list among ``names``, both directions.

    Parameters
    ----------
    edges
        A tab- (``.tsv``/``.txt``) or comma- (``.csv``) separated file with a header, or a
        DataFrame: two columns of node names and, optionally, a third of non-negative weights
        (default 1).
    names
        The nodes (feature names of the data).
    argument
        The argument's name, for messages.

    Returns
    -------
    ``(rows, cols, weights, description)``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the list has fewer than two columns, non-numeric, negative or missing weights, or none
        of its names is in ``names``.

    Warns
    -----
    UserWarning
        If only some of its names are in ``names`` (with the counts).
    """
    if isinstance(edges, pd.DataFrame):
        frame, what = edges, "edge list (DataFrame)"
    else:
        path = os.fspath(edges)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{argument}={path!r}: no such file (expected an edge list with two columns of "
                "names and an optional column of weights, or a GMT file of gene sets)."
            )
        sep = "," if path.endswith(".csv") else "\t"
        frame = pd.read_csv(path, sep=sep)
        what = f"edge list {os.path.basename(path)}"
    if frame.shape[1] < 2:
        raise ValueError(
            f"{argument} ({what}): an edge list needs two columns of node names (and optionally "
            f"a third of weights); found {frame.shape[1]} column(s): {list(frame.columns)}."
        )
    if frame.shape[1] >= 3:
        weights = pd.to_numeric(frame.iloc[:, 2], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(weights)
        if bad.any():
            raise ValueError(
                f"{argument} ({what}): column {frame.columns[2]!r} must hold finite numeric "
                f"weights; {int(bad.sum())} row(s) are missing, not numeric or infinite (first: "
                f"row {int(np.flatnonzero(bad)[0])})."
            )
        if (weights < 0).any():
            raise ValueError(
                f"{argument} ({what}): column {frame.columns[2]!r} has "
                f"{int((weights < 0).sum())} negative weight(s); weights must be >= 0."
            )
    else:
        weights = np.ones(len(frame))
    index = pd.Index([str(n) for n in names])
    a = index.get_indexer(frame.iloc[:, 0].astype(str))
    b = index.get_indexer(frame.iloc[:, 1].astype(str))
    listed = pd.unique(np.r_[frame.iloc[:, 0].astype(str), frame.iloc[:, 1].astype(str)])
    n_found = int(index.isin(listed).sum())
    if n_found == 0:
        raise ValueError(
            f"{argument} ({what}): none of its {len(listed)} names is among the data's "
            f"{len(index)} features (e.g. {list(listed[:3])} vs {list(index[:3])}); match the "
            "names (symbols vs IDs) first."
        )
    if n_found < len(index) or n_found < len(listed):
        warnings.warn(
            f"{argument} ({what}): {n_found} of the data's {len(index)} features are in it "
            f"and {len(listed) - n_found} of its {len(listed)} names are not in the data; "
            "only edges between the data's features are used.",
            UserWarning,
            stacklevel=3,
        )
    keep = (a >= 0) & (b >= 0)
    a, b, w = a[keep], b[keep], weights[keep].astype(np.float32)
    return np.r_[a, b], np.r_[b, a], np.r_[w, w], what


def prior_graph(
    spec: Any,
    names: Sequence[str],
    values: sp.spmatrix | np.ndarray,
    width: int,
    threshold: float,
    argument: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The padded table of one prior graph (see the module docstring) and its description.

    Parameters
    ----------
    spec
        ``None`` (no graph), ``"auto"`` (co-expression), a path (``.gmt``: gene sets; other: an
        edge list), a DataFrame (edge list) or a dict of sets.
    names
        Node names.
    values
        Cells x nodes normalised values of the reference cells (co-expression weights).
    width
        Neighbours kept per node.
    threshold
        Co-expression pairs with cosine at or below it are dropped.
    argument
        Argument name, for messages.
    """
    n = len(names)
    if spec is None or width == 0:
        return np.zeros((n, width), np.int64), np.zeros((n, width), np.float32), "none"
    if isinstance(spec, str) and spec == "auto":
        index, weight = cosine_neighbors(values, width, threshold)
        return index, weight, "co-expression"
    if isinstance(spec, Mapping) or (
        isinstance(spec, str | os.PathLike) and os.fspath(spec).endswith(".gmt")
    ):
        if isinstance(spec, Mapping):
            sets, what = spec, f"{len(spec)} gene sets"
        else:
            if not os.path.exists(os.fspath(spec)):
                raise FileNotFoundError(f"{argument}={os.fspath(spec)!r}: no such file.")
            sets = read_gmt(spec)
            what = f"{len(sets)} gene sets of {os.path.basename(os.fspath(spec))}"
        mask, covered = gene_set_mask(sets, names)
        if mask.nnz == 0:
            raise ValueError(
                f"{argument} ({what}) links no two of the {n} features: none of its names match "
                f"(e.g. {list(names[:3])}); match the names (symbols vs IDs) first."
            )
        if covered < n:
            warnings.warn(
                f"{argument} ({what}) covers {covered} of the {n} features; the others have no "
                "prior edges.",
                UserWarning,
                stacklevel=3,
            )
        index, weight = cosine_neighbors(values, width, threshold, allowed=mask)
        return index, weight, what
    if isinstance(spec, str | os.PathLike | pd.DataFrame):
        rows, cols, weights, what = read_edge_list(spec, names, argument)
        index, weight = padded_table(rows, cols, weights, n, width)
        return index, weight, what
    raise TypeError(
        f"{argument} must be 'auto', None, a path (GMT gene sets or an edge list), a DataFrame "
        f"edge list or a dict of gene sets; got {type(spec).__name__}."
    )


# ---------------------------------------------------------------------------- encodes links
def _candidates(protein: str, symbols: Mapping[str, Sequence[str]] | None) -> list[str]:
    """Gene symbols a protein may be encoded by, most specific first."""
    if symbols is not None and protein in symbols:
        given = symbols[protein]
        return [given] if isinstance(given, str) else [str(g) for g in given]
    base = protein.split("_")[0] if "_" in protein else protein
    out = []
    for name in (protein, base):
        key = name.upper()
        out.extend(PROTEIN_ALIASES.get(key, ()))
        out.append(key)
    return list(dict.fromkeys(out))


def encodes_links(
    proteins: Sequence[str],
    genes: Sequence[str],
    symbols: Mapping[str, Sequence[str] | str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Gene-protein "encodes" links by symbol, as a padded ``(n_proteins, MAX_LINKS)`` table.

    A protein is linked to every gene whose name (or upper-case name) is one of its candidate
    symbols: ``symbols[protein]`` when given, else the gene symbols of
    :data:`PROTEIN_ALIASES` for its name (or for its part before the first ``_``, as in
    ``CD3_AGGATCGA``), then that name itself.

    Returns
    -------
    ``(index, weight, unmatched)``: the table (weight 1 for a link) and the proteins without a
    gene.
    """
    exact = {str(g): i for i, g in enumerate(genes)}
    upper = {str(g).upper(): i for i, g in reversed(list(enumerate(genes)))}
    index = np.zeros((len(proteins), MAX_LINKS), dtype=np.int64)
    weight = np.zeros((len(proteins), MAX_LINKS), dtype=np.float32)
    unmatched = []
    for p, protein in enumerate(proteins):
        found = []
        for symbol in _candidates(str(protein), symbols):
            g = exact.get(symbol, upper.get(symbol.upper()))
            if g is not None and g not in found:
                found.append(g)
        found = found[:MAX_LINKS]
        index[p, : len(found)] = found
        weight[p, : len(found)] = 1.0
        if not found:
            unmatched.append(str(protein))
    return index, weight, unmatched
