r"""Pool the leave-one-gene-out imputation of several ``reference_imputation.py`` runs.

A run over all shared genes does not fit one CPU session, so the genes can be split over runs
of the same command (``--gene-names`` differing). Every gene trains fresh models from the same
seed, so a gene's scores do not depend on the other genes of its run, and the runs' per-gene
tables can be pooled. This script checks that the runs agree on everything but the genes and
the output folder, pools their per-gene scores and writes the median and mean over all genes,
stAI's one-sided Mann-Whitney tests against each baseline and the per-gene PCC table.

Usage::

    python benchmarks/combine_imputation_runs.py --setting a \
      --runs benchmarks/results/run1 benchmarks/results/run2 --out benchmarks/results/pooled

Writes ``reference_imputation.md`` and ``reference_imputation.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd

import reference_imputation as ri

#: config entries that may differ between pooled runs
PER_RUN = {"gene_names", "genes", "out", "workdir"}


def read_run(folder: Path, setting: str) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """A run's config and its per-gene scores of ``setting``, one DataFrame per method."""
    report = json.loads((folder / "reference_imputation.json").read_text())
    if setting not in report["settings"]:
        raise ValueError(f"{folder} has no setting {setting!r}.")
    per_gene = {
        method: pd.DataFrame(rows)
        for method, rows in report["settings"][setting]["per_gene"].items()
    }
    return report["config"], per_gene


def pool(folders: list[Path], setting: str) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Pooled per-gene scores; the runs' shared config (fails if the runs differ otherwise)."""
    configs, tables = zip(*(read_run(f, setting) for f in folders), strict=True)
    shared = {k: v for k, v in configs[0].items() if k not in PER_RUN}
    for folder, config in zip(folders[1:], configs[1:], strict=True):
        diff = sorted(
            k
            for k in set(shared) | set(config)
            if k not in PER_RUN and config.get(k) != shared.get(k)
        )
        if diff:
            raise ValueError(f"{folder} differs from {folders[0]} in {diff}; pool like runs only.")
    methods = list(tables[0])
    if any(list(t) != methods for t in tables):
        raise ValueError("the runs scored different methods.")
    pooled = {m: pd.concat([t[m] for t in tables], ignore_index=True) for m in methods}
    genes = pooled[methods[0]]["gene"]
    if genes.duplicated().any():
        raise ValueError(
            f"genes scored in more than one run: {sorted(set(genes[genes.duplicated()]))}"
        )
    return shared, pooled


def main(argv: list[str] | None = None) -> None:
    """Pool the runs and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=["a", "b"], required=True)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="report folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config, per_gene = pool(args.runs, args.setting)
    pcc = pd.DataFrame({ri.NAMES[m]: df.set_index("gene")["pcc"] for m, df in per_gene.items()})
    lines = [
        f"# Leave-one-gene-out imputation, setting ({args.setting}), "
        f"pooled over {len(args.runs)} runs",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in sys.argv) + "`",
        "",
        "Runs (each report holds its command, timings and memory): "
        + ", ".join(f"`{f}`" for f in args.runs)
        + ". They agree on every setting but the genes: "
        + ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if k not in ("settings",))
        + ".",
        "",
        f"## {len(pcc)} genes",
        "",
        ri.fmt_table(ri.imputation_summary(per_gene)),
        "",
    ]
    if "stai" in per_gene and len(per_gene) > 1:
        lines += [
            "One-sided Mann-Whitney U tests over genes, stAI against each baseline:",
            "",
            ri.fmt_table(ri.stai_tests(per_gene)),
            "",
        ]
    lines += [
        "Per-gene PCC:",
        "",
        ri.fmt_table(pcc.reset_index().round(4)),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference_imputation.md").write_text("\n".join(lines))
    (args.out / "reference_imputation.json").write_text(
        json.dumps(
            {
                "runs": [str(f) for f in args.runs],
                "config": config,
                "per_gene": {m: df.to_dict(orient="records") for m, df in per_gene.items()},
            },
            indent=1,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
