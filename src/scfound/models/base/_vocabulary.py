"""Gene-token tables of the models with a gene vocabulary (CellPLM, ExpressionTransformer)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def gene_table(
    weight: torch.Tensor, vocabulary: Sequence[str], genes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Rows of a gene-token table as a DataFrame indexed by gene (a copy, not a view).

    Parameters
    ----------
    weight
        ``(len(vocabulary), d)`` table.
    vocabulary
        The genes of the table's rows.
    genes
        Genes to return, in this order (default the whole vocabulary). Genes the vocabulary
        lacks get NaN rows and a warning with their count.

    Raises
    ------
    ValueError
        If none of ``genes`` is in the vocabulary.
    """
    table = weight.detach().float().cpu().numpy().copy()
    vocabulary = [str(g) for g in vocabulary]
    if genes is None:
        return pd.DataFrame(table, index=pd.Index(vocabulary, name="gene"))
    genes = [str(g) for g in genes]
    lookup = {g: i for i, g in enumerate(vocabulary)}
    index = np.array([lookup.get(g, -1) for g in genes], dtype=np.int64)
    unknown = int((index < 0).sum())
    if unknown == len(genes):
        raise ValueError(
            f"none of the {len(genes)} genes is in the model's vocabulary of "
            f"{len(vocabulary)} genes (genes: {genes[:3]}, vocabulary: {vocabulary[:3]}); pass "
            "gene identifiers of the vocabulary (`gene_key=`)."
        )
    if unknown:
        warnings.warn(
            f"{unknown} of {len(genes)} genes are not in the model's vocabulary (e.g. "
            f"{[g for g, i in zip(genes, index, strict=True) if i < 0][:5]}); their embeddings "
            "are NaN.",
            UserWarning,
            stacklevel=3,
        )
    values = np.full((len(genes), table.shape[1]), np.nan, dtype=np.float32)
    values[index >= 0] = table[index[index >= 0]]
    return pd.DataFrame(values, index=pd.Index(genes, name="gene"))
