"""The README's result tables quote the studies' generated reports.

``python -m dsnet.report`` writes each study's tables from its tidy data (``results/<study>/``) into
``docs/studies/<study>/``; the README's rows are written by hand from them. A regenerated report that
moves a number fails here until the README follows.
"""

from __future__ import annotations

import re

from conftest import ROOT

STUDIES = {"Fashion-MNIST": "fashion_mnist", "CIFAR-10": "cifar10"}  # the data cell's start -> study folder
MEAN_CI = re.compile(r"([−+]?\d+\.\d\d) ± (\d+\.\d\d)(?:%| pp)")


def readme_result_rows() -> list[tuple[str, list[str]]]:
    """(study, cells) of each README table row with a "dsconv − standard" cell in pp, from a study of ours."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        study = next((s for data, s in STUDIES.items() if len(cells) == 7 and cells[1].startswith(data)), None)
        if study and cells[4].endswith(" pp"):
            rows.append((study, cells))
    return rows


def test_each_readme_result_row_is_a_row_of_its_studys_generated_tables():
    rows = readme_result_rows()
    assert {study for study, _ in rows} == set(STUDIES.values()) and len(rows) >= 5, rows
    folders = {study: ROOT / "docs" / "studies" / study for study in STUDIES.values()}
    generated = {study: "\n".join(path.read_text() for path in sorted(folder.rglob("*.md")))
                 for study, folder in folders.items()}
    tables = {study: (folder / "tables.md").read_text() for study, folder in folders.items()}
    for study, cells in rows:
        comparison, data, standard, dsconv, difference = cells[:5]
        (a, a_ci), (b, b_ci), (d, d_ci) = (MEAN_CI.fullmatch(cell).groups() for cell in (standard, dsconv, difference))
        d = d.replace("−", "-")
        # the paired comparison: both arms' means and their difference by seed, on one line
        assert f"| {a} | {b} | {d} ± {d_ci} |" in generated[study], (comparison, data)
        # each arm's mean and interval over seeds, in the per-configuration table
        assert f"| {a} ± {a_ci} (n=" in tables[study] and f"| {b} ± {b_ci} (n=" in tables[study], (comparison, data)
