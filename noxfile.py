"""Developer tasks: ``nox -s tests``, ``lint``, ``docs``, ``demo`` and ``bench``.

Every session that installs scfound installs ``torch==2.13.0`` first: that pin resolves to a CPU
wheel, whereas an unpinned torch pulls several GB of CUDA packages.
"""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

TORCH = "torch==2.13.0"
LINT_PATHS = ("src", "tests", "benchmarks", "noxfile.py")
PYTHON = "3.11" if shutil.which("python3.11") else None


def install(session: nox.Session, extras: str | None = None) -> None:
    """Install the pinned torch, then scfound in editable mode with ``extras``."""
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest, e.g. ``-- -m 'not slow'``)."""
    install(session, "test")
    # the authors' CellPLM package, for the parity test (its declared dependencies are not needed)
    session.install("--no-deps", "cellplm==0.1.0.post2")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check linting and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML documentation into ``docs/_build/html``."""
    install(session, "doc")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the end-to-end demo; it writes its outputs into ``scfound_demo_output/``."""
    install(session)
    session.run("python", "-m", "scfound", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the spatial imputation benchmark (extra arguments go to the script)."""
    install(session)
    session.run("python", "benchmarks/spatial_imputation.py", *session.posargs)
