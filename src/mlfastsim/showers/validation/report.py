"""One self-contained HTML page per validation: metrics table, inputs, geometry and every figure.

Images are embedded as base64 so the page can be mailed, attached to a merge request or archived with no
directory next to it.  Each metric carries a pass / warn / fail colour from
:func:`mlfastsim.showers.validation.metrics.grade`, so the page reads at a glance.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlfastsim.core.io import atomic_write_text
from mlfastsim.showers.validation.metrics import grade
from mlfastsim.showers.validation.observables import OBSERVABLE_INFO, PER_LAYER, layer_prefix

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } td.name { text-align: left; font-family: monospace; }
td.pass { background: #d8f0d8; } td.warn { background: #fbefc5; } td.fail { background: #f6cccc; }
td.na { color: #888; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.small { font-size: .85em; color: #555; } code { background: #f6f6f6; padding: 0 .2em; }
"""

_GRADE_CLASS = {"pass": "pass", "warn": "warn", "fail": "fail", "n/a": "na"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _cell(value: Any, kind: str | None = None, error: float | None = None) -> str:
    cls = _GRADE_CLASS[grade(kind, value, error)] if kind is not None else ""
    text = _fmt(value) if error is None else f"{_fmt(value)} ± {_fmt(error)}"
    return f'<td class="{cls}">{text}</td>'


def _table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _observables_rows(observables: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Rows for per-shower and profile observables, and one summary row per per-layer family."""
    singles, families = [], []
    layer_keys = {layer_prefix(k) for k in PER_LAYER}
    for name, m in observables.items():
        if any(name.startswith(prefix) for prefix in layer_keys):
            continue
        info = OBSERVABLE_INFO.get(name)
        label = html.escape(info.label if info else name)
        singles.append(
            f'<tr><td class="name">{html.escape(name)}</td><td class="name">{label}</td>'
            + _cell(m["separation_power"], "separation_power")
            + _cell(m.get("separation_power_floor"))
            + _cell(m["wasserstein"])
            + _cell(m.get("wasserstein_norm"), "wasserstein_norm")
            + f"<td>{m.get('n_bins', '')}</td></tr>"
        )
    for key in PER_LAYER:
        prefix = layer_prefix(key)
        entries = {n: m for n, m in observables.items() if n.startswith(prefix)}
        if not entries:
            continue
        sps = {n: m["separation_power"] for n, m in entries.items()}
        worst = max(sps, key=lambda n: sps[n])
        norms = [m["wasserstein_norm"] for m in entries.values() if m.get("wasserstein_norm") is not None]
        families.append(
            f'<tr><td class="name">{html.escape(key)}</td>'
            f'<td class="name">{html.escape(OBSERVABLE_INFO[key].label)}</td>'
            + _cell(sum(sps.values()) / len(sps), "separation_power")
            + _cell(sps[worst], "separation_power")
            + f'<td class="name">{html.escape(worst)}</td>'
            + _cell(max(norms) if norms else None, "wasserstein_norm")
            + "</tr>"
        )
    return singles, families


def render_report(
    metrics: Mapping[str, Any],
    figures: Mapping[str, Path],
    *,
    labels: Sequence[str],
    inputs: Mapping[str, str],
    geometry: Mapping[str, Any],
    captions: Mapping[str, str] | None = None,
    title: str = "Shower validation",
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    captions = captions or {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='small'>generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by mlfastsim</p>",
        "<h2>Inputs</h2>",
        _table(
            ["role", "label", "file", "showers"],
            [
                f"<tr><td class='name'>reference</td><td class='name'>{html.escape(labels[0])}</td>"
                f"<td class='name'>{html.escape(inputs.get('reference', '–'))}</td>"
                f"<td>{metrics.get('n_reference', '')}</td></tr>",
                f"<tr><td class='name'>candidate</td><td class='name'>{html.escape(labels[1])}</td>"
                f"<td class='name'>{html.escape(inputs.get('candidate', '–'))}</td>"
                f"<td>{metrics.get('n_candidate', '')}</td></tr>",
            ],
        ),
        "<h2>Geometry</h2>",
        f"<pre>{html.escape(json.dumps(dict(geometry), indent=1))}</pre>",
        "<h2>Summary</h2>",
    ]
    summary_rows = []
    for level, res in (metrics.get("classifier") or {}).items():
        summary_rows.append(
            f"<tr><td class='name'>classifier AUC ({html.escape(level)})</td>"
            + _cell(res["auc"], "auc")
            + "</tr>"
        )
        summary_rows.append(
            f"<tr><td class='name'>classifier JSD ({html.escape(level)})</td>"
            + _cell(res["jsd"], "jsd")
            + "</tr>"
        )
    for key in ("fpd", "kpd"):
        if metrics.get(key):
            m = metrics[key]
            summary_rows.append(
                f"<tr><td class='name'>{key.upper()}</td>" + _cell(m["value"], key, m["error"]) + "</tr>"
            )
    if summary_rows:
        parts.append(_table(["metric", "value"], summary_rows))
    parts.append(
        "<p class='small'>Colours: green pass, yellow warn, red fail. "
        "Separation power: pass ≤ 0.01, warn ≤ 0.05; "
        "normalised Wasserstein-1 (W1 / reference std): pass ≤ 0.05, warn ≤ 0.2; "
        "AUC: pass ≤ 0.6, warn ≤ 0.75; "
        "JSD: pass ≤ 0.05, warn ≤ 0.2; FPD, KPD: pass below 3 standard errors from 0, warn below 10. "
        "The floor is the separation power expected between two samples of the same distribution of these "
        "sizes with this binning.</p>"
    )
    singles, families = _observables_rows(metrics.get("observables", {}))
    parts.append("<h2>Observables</h2>")
    parts.append(
        _table(["observable", "description", "separation power", "floor", "W1", "W1 / std", "bins"], singles)
    )
    if families:
        parts.append("<h3>Per-layer features (CaloChallenge)</h3>")
        parts.append(
            _table(["feature", "description", "mean SP", "max SP", "worst layer", "max W1 / std"], families)
        )
    parts.append("<h2>Figures</h2>")
    for name, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = captions.get(name, name)
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    path: str | Path, metrics: Mapping[str, Any], figures: Mapping[str, Path], **kwargs: Any
) -> Path:
    """Write the self-contained report atomically (keyword arguments as :func:`render_report`)."""
    return atomic_write_text(path, render_report(metrics, figures, **kwargs))
