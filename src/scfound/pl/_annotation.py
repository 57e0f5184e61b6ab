"""Cell-type annotation results: confusion matrix and F1 score of every class."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from scfound._docs import doc_params, doc_show_save
from scfound._keys import find_prediction
from scfound.metrics import annotation_scores, per_class_scores

from ._utils import finish_figure

#: Above this many predicted classes the cells of the confusion matrix are not labelled.
MAX_ANNOTATED_CLASSES = 15
CELL_SIZE = 0.45


@doc_params(show_save=doc_show_save)
def annotation(  # noqa: D417 - show and save are filled in by doc_params
    adata: AnnData | pd.DataFrame,
    truth_key: str,
    prediction_key: str | None = None,
    *,
    method: str | None = None,
    normalize: bool = True,
    cmap: str = "Blues",
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Confusion matrix of predicted cell types and the F1 score of each true class.

    The left panel crosses the true classes (rows) with the predicted ones (columns); a class
    that is predicted but absent from the truth gets a column only, after the true classes. The
    right panel shows the F1 score of each true class on the same rows
    (:func:`scfound.metrics.per_class_scores`). The title gives accuracy, macro F1 and weighted
    F1 (:func:`scfound.metrics.annotation_scores`).

    Parameters
    ----------
    adata
        Annotated data matrix holding both labels in ``adata.obs``, or a DataFrame such as
        ``adata.obs``.
    truth_key
        Column with the true label of each cell.
    prediction_key
        Column with the predicted label of each cell; overrides ``method``.
    method
        Method (or ``key_added`` of :func:`scfound.tl.annotate`) whose labels to show, read from
        ``obs["<method>_prediction"]``. Default: the latest ``annotate`` run recorded in
        ``adata.uns["scfound"]``, else the one column whose name ends in ``"_prediction"``.
    normalize
        Divide every row by the number of cells of its true class, so that the diagonal is the
        recall of each class; ``False`` shows numbers of cells.
    cmap
        Colour map of the confusion matrix.
    {show_save}

    Returns
    -------
    The figure; its axes are the confusion matrix, the F1 bars and the colour bar.

    Raises
    ------
    KeyError
        If a column is missing, or the predictions cannot be found from ``method``.
    ValueError
        If labels are missing or there are no cells.

    Examples
    --------
    >>> import pandas as pd
    >>> import scfound as sf
    >>> obs = pd.DataFrame(
    ...     {{"celltype": ["a", "a", "b", "b"], "stai_prediction": ["a", "b", "b", "b"]}}
    ... )
    >>> fig = sf.pl.annotation(obs, "celltype")
    """
    if isinstance(adata, AnnData):
        obs, where = adata.obs, "adata.obs"
    elif isinstance(adata, pd.DataFrame):
        obs, where = adata, "the DataFrame"
    else:
        raise TypeError(
            f"adata must be an AnnData or a DataFrame of labels, got {type(adata).__name__}."
        )
    if prediction_key is None:
        prediction_key, _ = find_prediction(adata, method)
    for argument, key in (("truth_key", truth_key), ("prediction_key", prediction_key)):
        if key not in obs.columns:
            raise KeyError(
                f"{argument} {key!r} is not a column of {where} (columns: {list(obs.columns)})."
            )
        n_missing = int(obs[key].isna().sum())
        if n_missing:
            raise ValueError(f"{where}[{key!r}] has {n_missing} missing labels.")
    truth = obs[truth_key].to_numpy()
    predicted = obs[prediction_key].to_numpy()
    scores = per_class_scores(truth, predicted)
    overall = annotation_scores(truth, predicted)

    rows = scores.index[scores["support"] > 0]
    columns = rows.append(scores.index[scores["support"] == 0])
    counts = confusion_matrix(truth, predicted, labels=columns)[: len(rows)]
    values = counts / counts.sum(axis=1, keepdims=True) if normalize else counts

    n_rows, n_cols = len(rows), len(columns)
    width = float(np.clip(CELL_SIZE * n_cols + 4.5, 5.5, 18.0))
    height = float(np.clip(CELL_SIZE * n_rows + 1.8, 3.0, 14.0))
    fig, (ax, ax_f1) = plt.subplots(
        1,
        2,
        figsize=(width, height),
        width_ratios=[max(n_cols, 2), 2.5],
        layout="constrained",
    )
    image = ax.imshow(
        values,
        cmap=cmap,
        aspect="auto",
        interpolation="nearest",
        vmin=0.0,
        vmax=1.0 if normalize else None,
    )
    ax.set_xticks(np.arange(n_cols), [str(c) for c in columns], rotation=45, ha="right")
    ax.set_yticks(np.arange(n_rows), [str(c) for c in rows])
    ax.set_xlabel(f"predicted ({prediction_key})")
    ax.set_ylabel(f"true ({truth_key})")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""), fontsize="medium")
    if n_cols <= MAX_ANNOTATED_CLASSES:
        threshold = 0.5 * float(values.max())
        for i in range(n_rows):
            for j in range(n_cols):
                value = values[i, j]
                ax.text(
                    j,
                    i,
                    f"{value:.2f}" if normalize else f"{int(value)}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if value > threshold else "black",
                )
    fig.colorbar(
        image,
        ax=ax,
        shrink=0.8,
        label="fraction of the true class" if normalize else "cells",
    )

    f1 = scores.loc[rows, "f1"].to_numpy(dtype=float)
    y = np.arange(n_rows)
    ax_f1.barh(y, f1, color="C0", height=0.7)
    for yi, value in zip(y, f1, strict=True):
        ax_f1.text(min(value + 0.02, 0.98), yi, f"{value:.2f}", va="center", fontsize="x-small")
    ax_f1.set_ylim(n_rows - 0.5, -0.5)  # rows top to bottom, as in the matrix
    ax_f1.set_yticks(y, [])
    ax_f1.set_xlim(0.0, 1.0)
    ax_f1.set_xlabel("F1")
    ax_f1.set_title("F1 per class", fontsize="medium")
    ax_f1.grid(axis="x", alpha=0.3)
    ax_f1.set_axisbelow(True)
    fig.suptitle(
        f"accuracy {overall['accuracy']:.3f}, macro F1 {overall['macro_f1']:.3f}, "
        f"weighted F1 {overall['weighted_f1']:.3f}",
        fontsize="medium",
    )
    return finish_figure(fig, show=show, save=save)
