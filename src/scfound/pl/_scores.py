"""Per-gene imputation scores of one or several methods."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scfound._docs import doc_params, doc_show_save

from ._utils import finish_figure

#: Metrics for which a smaller value is better; genes are then sorted in ascending order.
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "l1", "jsd", "loss"})
#: Above this many genes the gene names are no longer written on the x axis.
MAX_LABELLED_GENES = 60
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")


@doc_params(show_save=doc_show_save)
def gene_scores(  # noqa: D417 - show and save are filled in by doc_params
    scores: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    metric: str = "pcc",
    sort: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Per-gene score of one method (bars) or several methods (one series of dots each).

    Parameters
    ----------
    scores
        Per-gene scores of one method, a :class:`~pandas.DataFrame` indexed by gene with one
        column per metric (``pcc``, ``scc``, ``rmse``, ...), as returned by
        :func:`scfound.metrics.per_gene_scores`; or a mapping from method name to such a frame.
    metric
        Column to plot.
    sort
        Order the genes by the first method's score, best first (descending, or ascending for
        error metrics such as ``rmse``, ``mae`` or ``jsd``). Otherwise keep the first frame's
        order.
    ax
        Axes to draw into; by default a new figure is created.
    {show_save}

    Returns
    -------
    The figure holding the plot.

    Raises
    ------
    KeyError
        If a frame has no column ``metric``.
    ValueError
        If ``scores`` is empty.

    Examples
    --------
    >>> import pandas as pd
    >>> import scfound as sf
    >>> spaformer = pd.DataFrame({{"pcc": [0.8, 0.5, 0.6]}}, index=["Gad2", "Mbp", "Vtn"])
    >>> knn = pd.DataFrame({{"pcc": [0.7, 0.4, 0.6]}}, index=["Gad2", "Mbp", "Vtn"])
    >>> fig = sf.pl.gene_scores({{"SpaFormer": spaformer, "kNN": knn}}, metric="pcc")
    """
    frames = _as_frames(scores, metric)
    first = frames[next(iter(frames))][metric]
    genes = first.index
    if sort:
        ascending = metric.lower() in LOWER_IS_BETTER
        genes = first.sort_values(ascending=ascending, na_position="last").index
    table = pd.DataFrame({name: frame[metric].reindex(genes) for name, frame in frames.items()})
    x = np.arange(len(genes))

    owned = ax is None
    if ax is None:
        width = float(np.clip(0.18 * len(genes) + 1.5, 4.0, 16.0))
        fig, ax = plt.subplots(figsize=(width, 3.5), layout="constrained")
    else:
        fig = ax.figure

    if len(frames) == 1:
        ax.bar(x, table.iloc[:, 0].to_numpy(dtype=float), color="C0", width=0.8)
    else:
        for k, (name, values) in enumerate(table.items()):
            median = float(np.nanmedian(values.to_numpy(dtype=float)))
            ax.scatter(
                x,
                values.to_numpy(dtype=float),
                s=18,
                marker=MARKERS[k % len(MARKERS)],
                color=f"C{k}",
                label=f"{name} (median {median:.3f})",
                zorder=3,
            )
        ax.legend(fontsize="small", frameon=False)
    if len(genes) <= MAX_LABELLED_GENES:
        ax.set_xticks(x, [str(g) for g in genes], rotation=90, fontsize="small")
        ax.set_xlabel("gene")
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(genes)} genes" + (" (sorted)" if sort else ""))
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return finish_figure(fig, show=show, save=save, owned=owned)


def _as_frames(
    scores: pd.DataFrame | Mapping[str, pd.DataFrame], metric: str
) -> dict[str, pd.DataFrame]:
    """Normalise the input to ``{method: frame}`` and check that each has ``metric``."""
    if isinstance(scores, pd.DataFrame):
        frames = {"": scores}
    elif isinstance(scores, Mapping):
        frames = dict(scores)
    else:
        raise TypeError(
            "scores must be a pandas DataFrame indexed by gene or a dict of method name -> "
            f"DataFrame, got {type(scores).__name__}."
        )
    if not frames:
        raise ValueError("scores is empty; pass at least one method's per-gene scores.")
    for name, frame in frames.items():
        label = "scores" if name == "" else f"scores[{name!r}]"
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{label} must be a pandas DataFrame, got {type(frame).__name__}.")
        if metric not in frame.columns:
            raise KeyError(
                f"metric {metric!r} is not a column of {label} (columns: {list(frame.columns)})."
            )
        if frame.empty:
            raise ValueError(f"{label} has no genes.")
    return frames
