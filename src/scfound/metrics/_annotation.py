"""Cell-type annotation metrics: accuracy, F1 scores, and precision/recall/F1 per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.utils.multiclass import unique_labels

Labels = Sequence | np.ndarray | pd.Series | pd.Categorical


def annotation_scores(truth: Labels, predicted: Labels) -> dict[str, float]:
    """Accuracy, macro F1 and weighted F1 of predicted cell-type labels.

    The annotation scores of stAI, computed with :mod:`sklearn.metrics`. The F1 scores average
    over every class found in ``truth`` or ``predicted``: a class that is only predicted has
    F1 0 and, having no true cell, weight 0 in the weighted F1.

    Parameters
    ----------
    truth
        True label of each cell (e.g. ``adata.obs["celltype"]``).
    predicted
        Predicted label of each cell, in the same order (e.g. ``adata.obs["stai_prediction"]``).

    Returns
    -------
    Dictionary with ``'accuracy'`` (fraction of cells labelled correctly), ``'macro_f1'``
    (unweighted mean of the per-class F1 scores) and ``'weighted_f1'`` (mean weighted by the
    number of true cells of each class).

    Raises
    ------
    ValueError
        If the inputs are empty, not one-dimensional, of different lengths, or hold missing
        values.

    Examples
    --------
    >>> from scfound.metrics import annotation_scores
    >>> annotation_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])["accuracy"]
    0.75
    """
    truth, predicted = _check_labels(truth, predicted)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0.0)),
        "weighted_f1": float(f1_score(truth, predicted, average="weighted", zero_division=0.0)),
    }


def per_class_scores(truth: Labels, predicted: Labels) -> pd.DataFrame:
    """Precision, recall, F1 and support of every cell type.

    Parameters
    ----------
    truth
        True label of each cell.
    predicted
        Predicted label of each cell, in the same order.

    Returns
    -------
    DataFrame indexed by class (every label found in ``truth`` or ``predicted``, sorted) with
    columns ``'precision'``, ``'recall'``, ``'f1'`` and ``'support'`` (number of true cells).
    A score whose denominator is 0 is 0: the precision of a class that is never predicted and
    the recall of a class that is only predicted (support 0).

    Raises
    ------
    ValueError
        If the inputs are empty, not one-dimensional, of different lengths, or hold missing
        values.

    Examples
    --------
    >>> from scfound.metrics import per_class_scores
    >>> per_class_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])["recall"].tolist()
    [0.5, 1.0]
    """
    truth, predicted = _check_labels(truth, predicted)
    classes = unique_labels(truth, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0.0
    )
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(classes, name="class"),
    )


def _check_labels(truth: Labels, predicted: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Both label vectors as 1-d arrays of the same, non-zero length without missing values."""
    arrays = []
    for name, labels in (("truth", truth), ("predicted", predicted)):
        values = np.asarray(labels)
        if values.ndim != 1:
            raise ValueError(f"`{name}` must be one-dimensional, got shape {values.shape}.")
        if len(values) == 0:
            raise ValueError(f"`{name}` is empty; there are no labels to score.")
        n_missing = int(pd.isna(values).sum())
        if n_missing:
            raise ValueError(f"`{name}` has {n_missing} missing labels.")
        arrays.append(values)
    if len(arrays[0]) != len(arrays[1]):
        raise ValueError(
            f"`truth` has {len(arrays[0])} labels but `predicted` has {len(arrays[1])}; "
            "pass one label per cell in the same order."
        )
    return arrays[0], arrays[1]
