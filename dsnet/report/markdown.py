"""The report's Markdown: results, theory vs measurement, layer shares, runs without results.

Tables come from :mod:`dsnet.report.tables` in file units; here accuracy becomes percent and
costs millions, and ``–`` stands for a value that is not known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsnet.report.discover import Run, show_path
from dsnet.report.tables import CONTENTION_LIMIT, conv_label, is_contended, one_per_config

_THEORY_NOTE = (
    "Ratios above 1 mean dsconv is cheaper or faster. *Saving delivered* is the measured latency "
    "saving over the MAC saving, (1 − lat_ds/lat_std) / (1 − MACs_ds/MACs_std): 100% means the "
    "hardware turns every multiply-add saved into time saved.\n")
_SHARES_NOTE = (
    "Share of multiply-adds / parameters per layer type, in percent of the model total "
    "(MobileNet paper, Table 2). *uncounted* is what no conv or linear layer owns, e.g. "
    "normalisation parameters.\n")
_LAYER_NAMES = {"pointwise": "1x1 conv", "standard": "k x k conv", "linear": "fully connected"}


def fmt(value: Any, spec: str = "", scale: float = 1.0) -> str:
    """``value`` (times ``scale``) in ``spec``; ``–`` for None."""
    if value is None:
        return "–"
    return format(value * scale if scale != 1.0 else value, spec)


def has_epochs(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a table gets an epochs column: some row is of trained runs (eval-only rows have no
    schedule), so that rows of two schedules do not read as the same configuration twice."""
    return any(r["epochs"] is not None for r in rows)


def _config_header(conv: bool = True) -> list[str]:
    """Header cells naming a configuration; ``conv=False`` for tables that compare convs."""
    return ["dataset", "model", *(["conv"] if conv else []), "width", "resolution (px)"]


def _config_cells(row: dict[str, Any], conv: str | None) -> list[str]:
    """The cells under :func:`_config_header`; ``conv`` None leaves that column out."""
    return [row["dataset"], row["arch"], *([conv] if conv is not None else []),
            f"{row['width']:g}", str(row["image_size"])]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; columns whose cells all read as numbers are right-aligned."""
    numeric = [all(row[j][:1] in "0123456789-+–" for row in rows) for j in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _optional_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(key, header, format) of the columns shown only when some row has them, or when they vary."""
    cols = [(k, h, f) for k, h, f in (("train_size", "train images", "d"), ("epochs", "epochs", "d"),
                                       ("lr", "lr", "g"), ("weight_decay", "weight decay", "g"),
                                       ("depthwise_weight_decay", "depthwise wd", "g"))
            if any(r[k] is not None for r in rows)]
    for key, header in (("runtime", "runtime"), ("device_name", "device")):
        if len({r[key] for r in rows if r[key] is not None}) > 1:
            cols.append((key, header, "s"))
    return cols


def top1_cell(row: dict[str, Any]) -> str:
    """``91.00 ± 2.48 (n=3)``: mean ± half-width of the 95% interval, in percent; ``–`` if unknown."""
    cell = fmt(row["top1_mean"], ".2f", 100)
    if row["top1_ci95"] is not None:
        cell += f" ± {row['top1_ci95'] * 100:.2f}"
    if row["top1_mean"] is not None:
        cell += f" (n={row['n']})"
    return cell


def _results_md(rows: Sequence[dict[str, Any]]) -> str:
    extra = _optional_columns(rows)
    header = [*_config_header(), *(h for _, h, _ in extra), "params (M)", "MACs (M)",
              "top-1 (%), mean ± 95% CI", "latency p50 (ms)", "throughput (img/s)"]
    cpu = any(r.get("cpu_h") is not None for r in rows)
    body = [[*_config_cells(r, conv_label(r)),
             *("all" if k == "train_size" and r[k] is None and r["epochs"] is not None
               else fmt(r[k], f) for k, _, f in extra),
             f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e6:.2f}", top1_cell(r),
             fmt(r["latency_ms_p50"], ".3f"), fmt(r["throughput_img_s"], ".0f"),
             *([cpu_cell(r)] if cpu else [])] for r in rows]
    return markdown_table([*header, *(["training CPU-h"] if cpu else [])], body)


def cpu_cell(row: dict[str, Any]) -> str:
    """``2.09``: the configuration's training CPU-hours; ``1.20 (2 of 3 runs)`` where some of its
    runs recorded none or trained on an accelerator; ``–`` where none counts."""
    cell = fmt(row.get("cpu_h"), ".2f")
    if row.get("cpu_h") is not None and row["n_cpu"] < row["n_runs"]:
        cell += f" ({row['n_cpu']} of {row['n_runs']} runs)"
    return cell


def _theory_md(rows: Sequence[dict[str, Any]]) -> str:
    epochs = has_epochs(rows)
    header = [*_config_header(conv=False), *(["epochs"] if epochs else []), "runtime", "MACs std/ds",
              "params std/ds", "latency std/ds", "throughput ds/std", "saving delivered", "top-1 ds − std (pp)"]
    body = [[*_config_cells(r, None), *([fmt(r["epochs"], "d")] if epochs else []), _runtime_cell(r),
             fmt(r["macs_ratio"], ".2f"), fmt(r["params_ratio"], ".2f"),
             fmt(r["latency_ratio"], ".2f"), fmt(r["throughput_ratio"], ".2f"),
             fmt(r["saving_delivered"], ".0%"), fmt(r["top1_diff"], "+.2f", 100)]
            for r in rows]
    return markdown_table(header, body)


def _runtime_cell(row: dict[str, Any]) -> str:
    if row["runtime"] is None:
        return "–"
    return row["runtime"] + (f" {row['runtime_version']}" if row.get("runtime_version") else "")


def _shares_md(shares: Sequence[dict[str, Any]]) -> str:
    types = [k[: -len("_macs_share")] for k in shares[0] if k.endswith("_macs_share")]
    header = [*_config_header(),
              *(f"{_LAYER_NAMES.get(t, t)}: MACs / params (%)" for t in types)]
    body = [[*_config_cells(s, s["conv"]),  # the share rows' conv is already a label
             *(f"{s[f'{t}_macs_share'] * 100:.2f} / {s[f'{t}_params_share'] * 100:.2f}"
               for t in types)] for s in shares]
    return markdown_table(header, body)


def theory_section(theory: Sequence[dict[str, Any]]) -> str:
    """The theory-vs-measurement section: one row per configuration and runtime."""
    return ("## Theory vs measurement: standard / dsconv\n\n" + _THEORY_NOTE + "\n"
            + (_theory_md(theory) if theory else
               "No configuration has both standard and dsconv runs.\n"))


def shares_section(shares: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 2: share of MACs and parameters per layer type."""
    return ("## Where the cost is: share per layer type\n\n" + _SHARES_NOTE + "\n"
            + (_shares_md(shares) if shares else "No run has a MACs breakdown (eval results).\n"))


def write_markdown(out: Path, runs: Sequence[Run], rows: Sequence[dict[str, Any]],
                   sections: dict[str, str], missing: Sequence[tuple[Path, str]],
                   plots: Sequence[str], notes: Sequence[str], index: str = "results.md") -> list[str]:
    """Writes ``index`` (everything: ``results.md`` unless named) and each of ``sections`` as a file of its own.

    Args:
        sections: ``{file name: Markdown}`` of the analysis sections, in the order they appear.
        notes: lines said under the introduction (missing columns, runs left out).

    Returns:
        The file names written.
    """
    timed = [r for r in runs if r.record is not None]
    devices = sorted({f"{r['device_name']} ({r['device']}, {r['precision']}, "
                      f"{r['num_threads']} threads)" for r in rows if r["device"] is not None})
    timing = (f"latency is the median at {_batch_sizes(timed)}, measured on {'; '.join(devices)}."
              f"{_contention_note(timed)}" if timed else "no run has eval results, so no latency.")
    missing_md = "".join(f"- `{show_path(d)}`: {reason}\n" for d, reason in missing) or "None.\n"
    notes_md = "".join(f"- {line}\n" for line in notes)
    figures = "".join(f"![{alt}]({name})\n\n" for name, alt in
                      (("tradeoff.png", "accuracy against cost"),
                       ("learning_curves.png", "validation accuracy per epoch"),
                       ("lr_sensitivity.png", "validation accuracy against learning rate"),
                       ("cost_vs_latency.png", "latency against each counted cost"))
                      if name in plots) or "No run has top-1, so there are no plots.\n\n"
    results_md = (
        f"# dsnet report\n\n{len(runs)} runs in {_n_configs(rows)}. Top-1 is the mean "
        "over seeds ± the half-width of its 95% confidence interval (Student t, n − 1 degrees of "
        "freedom; n seeds); params and MACs count one image, forward; "
        f"{timing}\n\n" + (notes_md + "\n" if notes_md else "") + figures
        + "## Results\n\n" + _results_md(rows) + "\n" + "\n".join(sections.values())
        + f"\n## Runs without results ({len(missing)})\n\n" + missing_md)
    files = {index: results_md, **sections}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return list(files)


def _n_configs(rows: Sequence[dict[str, Any]]) -> str:
    n = len(one_per_config(rows))
    return f"{n} configurations" + (f" ({len(rows)} rows: one per measurement environment)"
                                    if len(rows) > n else "")


def _batch_sizes(runs: Sequence[Run]) -> str:
    sizes = sorted({r.record.latency_batch_size for r in runs})
    return "batch size " + " / ".join(map(str, sizes or [1]))


def _contention_note(runs: Sequence[Run]) -> str:
    """A warning when some latencies were timed while other processes used the CPUs."""
    busy = [r for r in runs if is_contended(r)]
    if not busy:
        return ""
    worst = max(r.values.get("cpu_contention") or 0.0 for r in busy)
    return (f" **{len(busy)} of {len(runs)} runs were timed while other processes used more than "
            f"{CONTENTION_LIMIT:.0%} of the CPUs, or were flagged so (up to {worst:.0%}; "
            "`cpu_contention` and `contention_flagged` in runs.csv): their latencies are upper "
            "bounds.**")
