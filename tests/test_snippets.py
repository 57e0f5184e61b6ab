"""Every Python snippet of the README and the docs runs as written on bundled data.

The snippets of each file run in order in one namespace, in a temporary folder. Training is cut
to one epoch (Lightning's ``Trainer`` is wrapped) so that the test checks that the code runs and
writes what it says, not how well the models fit; the demo and the benchmarks measure that. A
snippet that needs what CI does not have (a GPU, several devices, a file the user brings) is
preceded by a comment ``<!-- snippet: not run (reason) -->`` and is skipped with its reason.
"""

import re
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import pytest

import scfound as sf

matplotlib.use("Agg")

ROOT = Path(__file__).parents[1]
FILES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(<!-- snippet: not run \((?P<reason>[^)]*)\) -->\s*)?```python\n(?P<code>.*?)```", re.S
)


def snippets(path: str) -> list[tuple[str, str | None]]:
    """The ``python`` blocks of a Markdown file and, for those not run, the reason."""
    text = (ROOT / path).read_text()
    return [(textwrap.dedent(m["code"]), m["reason"]) for m in BLOCK.finditer(text)]


@pytest.fixture
def one_epoch(monkeypatch):
    init = pl.Trainer.__init__

    def short(self, *args, **kwargs):
        kwargs["max_epochs"] = 1
        kwargs.pop("max_steps", None)
        init(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", short)
    monkeypatch.setattr(sf.settings, "progress_bar", False)


def test_every_file_with_snippets_is_checked():
    assert "README.md" in FILES and "docs/verbs.md" in FILES
    assert snippets("README.md"), "the README lost its snippets"


@pytest.mark.slow
@pytest.mark.parametrize("path", [f for f in FILES if snippets(f)])
def test_snippets_run(path, one_epoch, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    namespace: dict = {}
    for i, (code, reason) in enumerate(snippets(path)):
        if reason is not None:
            assert reason.strip(), f"{path}: snippet {i} is skipped without a reason"
            continue
        try:
            exec(compile(code, f"{path}[snippet {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path}, snippet {i} failed:\n{code}") from err
        plt.close("all")
