"""Package-wide settings of scfound (``scfound.settings``)."""

from __future__ import annotations


class ScfoundSettings:
    """Settings that apply to every scfound model.

    Change them on the shared instance :data:`scfound.settings`, e.g.
    ``scfound.settings.progress_bar = False`` in a script or a batch job. An argument given to a
    single call (``model.train(enable_progress_bar=True)``) takes precedence over the setting.

    Attributes
    ----------
    progress_bar
        Show the training progress bar (epoch, loss, elapsed and remaining time) in
        ``model.train()`` of every model (default ``True``).

    """

    def __init__(self, progress_bar: bool = True):
        self.progress_bar = progress_bar

    @property
    def progress_bar(self) -> bool:
        """Show the training progress bar by default."""
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"settings.progress_bar must be True or False, got {value!r}.")
        self._progress_bar = value

    def __repr__(self) -> str:
        return f"ScfoundSettings(progress_bar={self.progress_bar})"


#: the settings object read by every model (``scfound.settings``)
settings = ScfoundSettings()
