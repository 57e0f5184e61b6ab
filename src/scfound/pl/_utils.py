"""Figure bookkeeping shared by the plotting functions (show/save handling)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

SAVE_DPI = 150


def finish_figure(
    fig: Figure, *, show: bool | None, save: str | Path | None, owned: bool = True
) -> Figure:
    """Save and/or show a finished figure, then return it.

    Parameters
    ----------
    fig
        The figure to finish.
    show
        ``True``: call :func:`matplotlib.pyplot.show`. ``None``: leave the figure open in pyplot,
        so that notebooks display it and scripts can show it later. ``False``: close it in
        pyplot (it can still be saved or displayed through the returned object).
    save
        Path of a file to write (format from the suffix, ``dpi=150``, ``bbox_inches="tight"``).
        Missing parent folders are created.
    owned
        Whether the function created ``fig`` itself; a figure passed in by the caller (through
        ``ax=``) is never closed.

    Returns
    -------
    The figure.
    """
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
    if show:
        plt.show()
    elif show is False and owned:
        plt.close(fig)
    return fig
