"""Parameter descriptions shared by several functions, one text each, filled into docstrings.

``tl`` verbs share their data and training arguments, ``pl`` functions their figure output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_INDENT = " " * 4

doc_adata = """\
adata
    Cells x genes with raw counts in ``layer`` (or ``.X``); a MuData is read (and written) at
    modality ``mod``."""

doc_reference = """\
reference
    A second dataset with raw counts (a scRNA-seq reference of the same tissue; genes matched
    by name), for the methods that read one.
reference_layer
    Layer of ``reference`` with its counts; ``None`` uses ``.X``."""

doc_shared = """\
layer
    Layer with the raw counts; ``None`` uses ``.X``.
spatial_key
    Key of the coordinates in ``obsm`` (used by the methods that read them, when present).
group_key
    Column of ``obs`` with the cells processed together (fields of view, tissue samples,
    slices). ``None``: SpaFormer cuts a section into tiles of about 500 cells (in the model's
    own AnnData); the other methods take all cells as one group.
model
    A trained model of ``method`` to apply instead of training one (CellPLM: also a
    pre-trained model to carry over, or the prefix of a checkpoint in the authors' layout).
max_epochs
    Training epochs when a model is trained; ``None`` takes the method's default.
model_kwargs, train_kwargs
    Passed to the model class and to its ``train`` method.
seed
    Random seed of the initial weights and of training.
mod
    Modality of a MuData ``adata`` (and ``reference``); default ``"rna"``, or the only one.
return_model
    Also return the model, so that another verb reuses it (``model=``) without training.
copy
    Return a modified copy instead of writing into ``adata``.
sample_key
    Deprecated name of ``group_key``.
**options
    Options of the method, listed for each method in the docs page "Verbs and methods"; an
    option the method does not know is an error."""

doc_returns = """\
``None``; the modified copy with ``copy=True``; the model with ``return_model=True`` (and
``(copy, model)`` with both)."""


doc_show_save = """\
show
    ``True`` calls :func:`matplotlib.pyplot.show`; ``None`` leaves the figure open in pyplot
    (notebooks display it); ``False`` closes a figure created here in pyplot (the returned
    figure stays usable).
save
    File to write the figure to (``dpi=150``, ``bbox_inches="tight"``)."""


def doc_params(**fragments: str) -> Callable[[Any], Any]:
    """Fill ``{name}`` fields of a docstring with the shared fragments, indented to fit."""

    def decorate(fn: Any) -> Any:
        indented = {k: v.replace("\n", "\n" + _INDENT) for k, v in fragments.items()}
        fn.__doc__ = fn.__doc__.format(**indented)
        return fn

    return decorate
