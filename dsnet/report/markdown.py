"""The report's Markdown: results, theory vs measurement, layer shares, runs without results.

Tables come from :mod:`dsnet.report.tables` in file units; here accuracy becomes percent and
costs millions, and ``–`` stands for a value that is not known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsnet.report.discover import Run, show_path
from dsnet.report.tables import conv_label

_THEORY_NOTE = (
    "Ratios above 1 mean dsconv is cheaper or faster. *Saving delivered* is the measured latency "
    "saving over the MAC saving, (1 − lat_ds/lat_std) / (1 − MACs_ds/MACs_std): 100% means the "
    "hardware turns every multiply-add saved into time saved.\n")
_SHARES_NOTE = (
    "Share of multiply-adds / parameters per layer type, in percent of the model total "
    "(MobileNet paper, Table 2). *uncounted* is what no conv or linear layer owns, e.g. "
    "normalisation parameters.\n")
_LAYER_NAMES = {"pointwise": "1x1 conv", "standard": "k x k conv", "linear": "fully connected"}


def _fmt(value: Any, spec: str = "", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


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


def _results_md(rows: Sequence[dict[str, Any]]) -> str:
    header = [*_config_header(), "params (M)", "MACs (M)", "top-1 (%)", "latency p50 (ms)",
              "throughput (img/s)"]
    several_devices = len({r["device_name"] for r in rows}) > 1
    if several_devices:
        header.append("device")
    body = []
    for r in rows:
        top1 = _fmt(r["top1_mean"], ".2f", 100)
        if r["top1_std"] is not None:
            top1 += f" ± {r['top1_std'] * 100:.2f}"
        if r["top1_mean"] is not None:
            top1 += f" (n={r['n']})"
        body.append([*_config_cells(r, conv_label(r)), f"{r['params'] / 1e6:.3f}",
                     f"{r['macs'] / 1e6:.2f}", top1, f"{r['latency_ms_p50']:.3f}",
                     f"{r['throughput_img_s']:.0f}",
                     *([r["device_name"]] if several_devices else [])])
    return markdown_table(header, body)


def _theory_md(rows: Sequence[dict[str, Any]]) -> str:
    header = [*_config_header(conv=False), "MACs std/ds", "params std/ds", "latency std/ds",
              "throughput ds/std", "saving delivered", "top-1 ds − std (pp)"]
    body = [[*_config_cells(r, None),
             _fmt(r["macs_ratio"], ".2f"), _fmt(r["params_ratio"], ".2f"),
             _fmt(r["latency_ratio"], ".2f"), _fmt(r["throughput_ratio"], ".2f"),
             _fmt(r["saving_delivered"], ".0%"), _fmt(r["top1_diff"], "+.2f", 100)]
            for r in rows]
    return markdown_table(header, body)


def _shares_md(shares: Sequence[dict[str, Any]]) -> str:
    types = [k[: -len("_macs_share")] for k in shares[0] if k.endswith("_macs_share")]
    header = [*_config_header(),
              *(f"{_LAYER_NAMES.get(t, t)}: MACs / params (%)" for t in types)]
    body = [[*_config_cells(s, s["conv"]),  # the share rows' conv is already a label
             *(f"{s[f'{t}_macs_share'] * 100:.2f} / {s[f'{t}_params_share'] * 100:.2f}"
               for t in types)] for s in shares]
    return markdown_table(header, body)


def write_markdown(out: Path, runs: Sequence[Run], rows: Sequence[dict[str, Any]],
                   theory: Sequence[dict[str, Any]], shares: Sequence[dict[str, Any]],
                   missing: Sequence[tuple[Path, str]], plots: Sequence[str]) -> list[str]:
    """Writes ``results.md`` (everything) and its two analysis sections as files of their own.

    Returns:
        The file names written.
    """
    theory_md = ("## Theory vs measurement: standard / dsconv\n\n" + _THEORY_NOTE + "\n"
                 + (_theory_md(theory) if theory else
                    "No configuration has both standard and dsconv runs.\n"))
    shares_md = ("## Where the cost is: share per layer type\n\n" + _SHARES_NOTE + "\n"
                 + (_shares_md(shares) if shares else "No run has a MACs breakdown.\n"))
    devices = sorted({f"{r['device_name']} ({r['device']}, {r['precision']}, "
                      f"{r['num_threads']} threads)" for r in rows})
    missing_md = "".join(f"- `{show_path(d)}`: {reason}\n" for d, reason in missing) or "None.\n"
    results_md = (
        f"# dsnet report\n\n{len(runs)} runs in {len(rows)} configurations. Top-1 is the mean "
        "over seeds ± sample std (n runs); params and MACs count one image, forward; latency is "
        f"the median at {_batch_sizes(runs)}, measured on {'; '.join(devices)}.{_contention_note(runs)}\n\n"
        + ("![accuracy against cost](tradeoff.png)\n\n" if "tradeoff.png" in plots else
           "No run has top-1, so there are no plots.\n\n")
        + "## Results\n\n" + _results_md(rows) + "\n" + theory_md + "\n" + shares_md
        + f"\n## Runs without results ({len(missing)})\n\n" + missing_md)
    files = {"results.md": results_md, "theory_vs_measurement.md": theory_md,
             "layer_shares.md": shares_md}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return list(files)


CONTENTION_LIMIT = 0.05  # share of all CPUs other processes may use while a run is timed


def _batch_sizes(runs: Sequence[Run]) -> str:
    sizes = sorted({r.record.latency_batch_size for r in runs})
    return "batch size " + " / ".join(map(str, sizes or [1]))


def _contention_note(runs: Sequence[Run]) -> str:
    """A warning when some latencies were timed while other processes used the CPUs."""
    busy = [r.record.cpu_contention for r in runs if (r.record.cpu_contention or 0.0) > CONTENTION_LIMIT]
    if not busy:
        return ""
    worst = max(busy)
    return (f" **{len(busy)} of {len(runs)} runs were timed while other processes used more than "
            f"{CONTENTION_LIMIT:.0%} of the CPUs (up to {worst:.0%}; `cpu_contention` in runs.csv): "
            "their latencies are upper bounds, and ratios between them are unreliable.**")
