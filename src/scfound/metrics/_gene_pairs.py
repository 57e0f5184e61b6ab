"""Gene-pair classification from gene embeddings (gene-gene or protein-protein interactions)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd


def _pair_table(pairs: pd.DataFrame, embedding: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose two genes have a finite embedding, with ``gene1``, ``gene2``, ``label``."""
    if not isinstance(embedding, pd.DataFrame):
        raise TypeError(
            f"`embedding` must be a genes x dimensions DataFrame, got {type(embedding).__name__}."
        )
    missing = [c for c in ("gene1", "gene2", "label") if c not in pairs.columns]
    if missing:
        raise KeyError(
            f"`pairs` needs the columns gene1, gene2, label; missing {missing} "
            f"(columns: {list(pairs.columns)})."
        )
    finite = embedding.index[np.isfinite(embedding.to_numpy(dtype=np.float64)).all(1)]
    known = set(finite.astype(str))
    table = pairs[["gene1", "gene2", "label"]].astype({"gene1": str, "gene2": str})
    keep = table["gene1"].isin(known) & table["gene2"].isin(known)
    return table.loc[keep].reset_index(drop=True)


def gene_pair_auc(
    embedding: pd.DataFrame,
    pairs: pd.DataFrame,
    *,
    test_pairs: pd.DataFrame | None = None,
    split: Literal["random", "gene_disjoint"] = "random",
    test_size: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """ROC AUC of a gradient-boosting classifier of gene pairs from concatenated embeddings.

    The thesis's protocol (Cao 2023, §4.3.3): a pair ``(g1, g2)`` is the vector ``emb(g1) ++
    emb(g2)``, scikit-learn's ``GradientBoostingClassifier()`` with default settings is fitted
    on training pairs, and the ROC AUC is measured on test pairs. Only pairs whose two genes
    have a finite embedding are used (the coverage is returned).

    Parameters
    ----------
    embedding
        Genes x dimensions DataFrame (e.g. ``model.get_gene_embeddings()`` or ``varm`` as a
        DataFrame); rows with NaN count as unknown genes.
    pairs
        Training pairs (columns ``gene1``, ``gene2``, ``label`` 0/1); split into training and
        test pairs unless ``test_pairs`` is given.
    test_pairs
        Given test pairs (e.g. the valid split of the Gene2vec benchmark).
    split
        Without ``test_pairs``: ``"random"`` (a stratified random split of the pairs; genes are
        shared between training and test) or ``"gene_disjoint"`` (genes are split into two
        sets; training pairs have both genes in one, test pairs both in the other, so no gene
        of a test pair was seen in training).
    test_size
        Fraction of pairs (``"random"``) or of genes (``"gene_disjoint"``) for testing.
    seed
        Seed of the split and of the classifier.

    Returns
    -------
    ``{"auc", "n_train", "n_test", "coverage"}``: coverage is the fraction of the given pairs
    (training and test) whose genes both have embeddings.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    if split not in ("random", "gene_disjoint"):
        raise ValueError(f"split must be 'random' or 'gene_disjoint', got {split!r}.")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}.")
    n_given = len(pairs) + (0 if test_pairs is None else len(test_pairs))
    train = _pair_table(pairs, embedding)
    test = None if test_pairs is None else _pair_table(test_pairs, embedding)
    coverage = (len(train) + (0 if test is None else len(test))) / max(n_given, 1)
    if test is None and split == "random":
        train, test = train_test_split(
            train, test_size=test_size, random_state=seed, stratify=train["label"]
        )
    elif test is None:
        genes = np.unique(train[["gene1", "gene2"]].to_numpy())
        rng = np.random.default_rng(seed)
        held = set(rng.choice(genes, round(test_size * len(genes)), replace=False))
        in1, in2 = train["gene1"].isin(held), train["gene2"].isin(held)
        train, test = train.loc[~in1 & ~in2], train.loc[in1 & in2]
    for name, part in (("training", train), ("test", test)):
        if part["label"].nunique() < 2:
            raise ValueError(
                f"the {name} pairs with embedded genes hold {len(part)} pairs of one class; "
                "an AUC needs both classes (more pairs or more embedded genes)."
            )
    table = embedding.astype(np.float64)
    table.index = table.index.astype(str)

    def features(part: pd.DataFrame) -> np.ndarray:
        return np.hstack([table.loc[part["gene1"]].to_numpy(), table.loc[part["gene2"]].to_numpy()])

    clf = GradientBoostingClassifier(random_state=seed)
    clf.fit(features(train), train["label"].to_numpy())
    scores = clf.predict_proba(features(test))[:, 1]
    return {
        "auc": float(roc_auc_score(test["label"].to_numpy(), scores)),
        "n_train": len(train),
        "n_test": len(test),
        "coverage": coverage,
    }
