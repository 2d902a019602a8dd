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
from mlfastsim.showers.validation.metrics import combined_excess, distance_grade, grade, grade_excess
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

HOW_TO_READ = """
<div class='howto'><h2>How to read this</h2>
<ul>
<li><b>Every distance has a floor.</b> Two finite samples of the <i>same</i> distribution never give a
distance of 0: the <i>floor</i> is what they give on average with these sample sizes, and its spread how much
that scatters.  A number is only meaningful next to its floor.</li>
<li><b>Grades are excesses over that floor</b>, counted in floor spreads:
<span class='pass'>&nbsp;pass&nbsp;</span> up to 3 (no difference visible with this many showers),
<span class='warn'>&nbsp;warn&nbsp;</span> up to 10 (a small but real difference),
<span class='fail'>&nbsp;fail&nbsp;</span> above (a clear difference).  With more showers the floor drops and
smaller differences fail: a grade says what <i>these</i> samples can resolve, not that a model is unusable.
Where no floor is measured, the metric is shown but not graded (n/a), and the text says so.</li>
<li><b>Separation power</b> (0 = identical histograms, 1 = disjoint): its floor is the chi-square expectation
(B - 1)/4 (1/N<sub>ref</sub> + 1/N<sub>cand</sub>) for B bins.  <b>W1</b> (Wasserstein-1) is shown in the
observable's own unit; its floor is measured by splitting the reference into random halves.
<b>Classifier AUC</b>: 0.5 means the network cannot tell the samples apart; its floor spread is that of an
uninformative classifier on the same evaluation split.  The <b>JSD</b> has no floor here and is not graded.</li>
<li><b>FPD and KPD</b> estimate a distance that is 0 for identical distributions, without bias, so for close
samples they scatter around 0 and <b>can be negative</b>: a negative value means "no difference found".  They
are graded by value / error; the error comes from resampling (random subsets for FPD, bootstrap batches for
KPD).</li>
<li><b>What to do with a fail</b>: look at the figure of that observable (profiles, per-layer separation, cell
spectrum) to see <i>where</i> the samples differ; check first that both samples were made at the same
incident energies and angles (a warning above says when they were not) and with the same readout threshold.</li>
</ul></div>
"""

_CSS_EXTRA = """
.howto { background: #f7f9fc; border: 1px solid #d6e0ee; padding: .2em 1em; margin: 1em 0; font-size: .92em; }
.howto span.pass { background: #d8f0d8; } .howto span.warn { background: #fbefc5; }
.howto span.fail { background: #f6cccc; }
.warning { background: #fbefc5; border: 1px solid #e6c75a; padding: .5em 1em; margin: .5em 0; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _graded_cell(value: Any, g: str | None, error: float | None = None) -> str:
    cls = _GRADE_CLASS[g] if g is not None else ""
    text = _fmt(value) if error is None else f"{_fmt(value)} ± {_fmt(error)}"
    return f'<td class="{cls}">{text}</td>'


def _cell(value: Any, kind: str | None = None, error: float | None = None) -> str:
    return _graded_cell(value, grade(kind, value, error) if kind is not None else None, error)


def _sp_grade(m: Mapping[str, Any]) -> str:
    return grade("separation_power", m.get("separation_power"), floor=m.get("separation_power_floor"),
                 floor_sd=m.get("separation_power_floor_sd"))


def _w1_grade(m: Mapping[str, Any]) -> str:
    return grade("wasserstein", m.get("wasserstein"), floor=m.get("wasserstein_floor"),
                 floor_sd=m.get("wasserstein_floor_sd"))


def _sig(value: float) -> str:
    """Three significant digits, no float noise."""
    return f"{value:.3g}"


def _floor_text(m: Mapping[str, Any], what: str) -> str:
    floor, sd = m.get(f"{what}_floor"), m.get(f"{what}_floor_sd")
    if floor is None:
        return "<td class='na'>none</td>"
    return f"<td>{_sig(floor)}" + (f" ± {_sig(sd)}" if sd else "") + "</td>"


def _table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _unit(m: Mapping[str, Any]) -> str:
    unit = m.get("unit_wasserstein") or ""
    return f" {html.escape(unit)}" if unit else ""


def _observables_rows(
    observables: Mapping[str, Mapping[str, Any]], official: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[str], list[str]]:
    """Rows for per-shower and profile observables, and one summary row per per-layer family."""
    singles, families = [], []
    layer_keys = {layer_prefix(k) for k in PER_LAYER}
    for name, m in observables.items():
        if any(name.startswith(prefix) for prefix in layer_keys):
            continue
        info = OBSERVABLE_INFO.get(name)
        label = html.escape(info.label if info else name)
        row = (
            f'<tr><td class="name">{html.escape(name)}</td><td class="name">{label}</td>'
            + _graded_cell(m["separation_power"], _sp_grade(m))
            + _floor_text(m, "separation_power")
        )
        if official is not None:
            o = official.get(name)
            row += (_graded_cell(o.get("separation_power"), _sp_grade(o)) if o else "<td class='na'>–</td>")
        w = m.get("wasserstein")
        row += (f'<td class="{_GRADE_CLASS[_w1_grade(m)]}">{_sig(w) if w is not None else "–"}{_unit(m)}</td>'
                + _floor_text(m, "wasserstein") + f"<td>{m.get('n_bins', '')}</td></tr>")
        singles.append(row)
    for key in PER_LAYER:
        prefix = layer_prefix(key)
        entries = {n: m for n, m in observables.items() if n.startswith(prefix)}
        if not entries:
            continue
        sps = {n: m["separation_power"] for n, m in entries.items()}
        worst = max(sps, key=lambda n: sps[n])
        w1_grades = [_w1_grade(m) for m in entries.values()]
        n_fail = sum(_sp_grade(m) == "fail" for m in entries.values())
        family = grade_excess(combined_excess(entries.values()))
        row = (
            f'<tr><td class="name">{html.escape(key)}</td>'
            f'<td class="name">{html.escape(OBSERVABLE_INFO[key].label)}</td>'
            + _graded_cell(sum(sps.values()) / len(sps), family)
            + _cell(sps[worst])
            + f'<td class="name">{html.escape(worst[-2:])}</td>'
            + f"<td>{n_fail} / {len(entries)}</td>"
        )
        if official is not None:
            o = {n: e for n, e in official.items() if n.startswith(prefix) and e.get("separation_power") is not None}
            if o:
                worst_o = max(o, key=lambda n: o[n]["separation_power"])
                row += _graded_cell(o[worst_o]["separation_power"], grade_excess(combined_excess(o.values()))) + (
                    f'<td class="name">{html.escape(worst_o[-2:])}</td>')
            else:
                row += "<td class='na'>–</td><td></td>"
        row += f"<td>{sum(g == 'fail' for g in w1_grades)} / {len(entries)}</td></tr>"
        families.append(row)
    return singles, families


def _clean_numbers(obj: Any) -> Any:
    """Floats rounded to 10 significant digits (no 13.950000000000001 in the page)."""
    if isinstance(obj, float):
        return float(f"{obj:.10g}")
    if isinstance(obj, Mapping):
        return {k: _clean_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_numbers(v) for v in obj]
    return obj


def _summary_rows(metrics: Mapping[str, Any]) -> list[str]:
    rows = []
    for level, res in (metrics.get("classifier") or {}).items():
        name = html.escape(level)
        if res.get("available", True) is False:
            rows.append(f"<tr><td class='name'>classifier ({name})</td><td class='na'>unavailable</td>"
                        f"<td></td><td class='name'>{html.escape(str(res.get('reason', '')))}</td></tr>")
            continue
        recipe = html.escape(str(res.get("recipe", "fast")))
        g = grade("auc", res["auc"], floor=res.get("auc_floor", 0.5), floor_sd=res.get("auc_floor_sd"))
        rows.append(
            f"<tr><td class='name'>classifier AUC ({name}, {recipe})</td>" + _graded_cell(res["auc"], g)
            + f"<td>0.5 ± {_fmt(res.get('auc_floor_sd'), 2)}</td>"
            f"<td class='name'>{res.get('n_eval', '')} evaluation showers, best epoch {res.get('best_epoch', '')}"
            "</td></tr>")
        rows.append(
            f"<tr><td class='name'>classifier JSD ({name}, {recipe})</td>" + _graded_cell(res["jsd"], "n/a")
            + "<td class='na'>none</td><td class='name'>not graded: no floor measured (read the AUC)</td></tr>")
    for key in ("fpd", "kpd"):
        m = metrics.get(key)
        if not m:
            continue
        if m.get("available", True) is False:
            rows.append(f"<tr><td class='name'>{key.upper()}</td><td class='na'>unavailable</td><td></td>"
                        f"<td class='name'>{html.escape(str(m.get('reason', '')))}</td></tr>")
            continue
        note = html.escape(str(m.get("method", f"median of {m.get('n_batches', '')} bootstrap batches of "
                                                f"{m.get('batch_size', '')}")))
        if m["value"] < 0 and m.get("extrapolated", True):
            note += "; negative: an unbiased estimate of 0 with noise, i.e. no difference found"
        rows.append(f"<tr><td class='name'>{key.upper()}</td>" + _graded_cell(m["value"], distance_grade(key, m),
                                                                               m["error"])
                    + f"<td>0</td><td class='name'>{note}</td></tr>")
    return rows


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
    threshold = metrics.get("threshold_mev") or 0.0
    settings = [
        f"<tr><td class='name'>readout threshold</td><td>{_fmt(float(threshold), 5)} MeV</td>"
        f"<td class='name'>{html.escape(str(metrics.get('threshold_source', '')))}</td></tr>",
        f"<tr><td class='name'>binning</td><td>{html.escape(str(metrics.get('binning_mode', 'adaptive')))}</td>"
        "<td class='name'>adaptive: reference-quantile bins sized to the samples (always shown); calochallenge: "
        "also every histogram on the official fixed bins (own column, comparable with published tables)</td></tr>",
        f"<tr><td class='name'>classifier</td><td>{html.escape(str(metrics.get('classifier_recipe') or 'off'))}</td>"
        "<td class='name'>fast: our quick network; calochallenge: the official network and inputs</td></tr>",
    ]
    matched = metrics.get("matched_conditions")
    if matched:
        settings.append(
            f"<tr><td class='name'>matched conditions</td><td>{html.escape(str(matched['how']))}</td>"
            f"<td class='name'>kept {matched['kept_reference']} of {matched['of_reference']} reference and "
            f"{matched['kept_candidate']} of {matched['of_candidate']} candidate showers</td></tr>")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}{_CSS_EXTRA}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='small'>generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by mlfastsim</p>",
        HOW_TO_READ,
    ]
    for warning in metrics.get("warnings") or []:
        parts.append(f"<div class='warning'><b>Warning:</b> {html.escape(warning)}</div>")
    parts += [
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
        "<h2>Settings</h2>",
        _table(["setting", "value", "meaning"], settings),
        "<h2>Geometry</h2>",
        f"<pre>{html.escape(json.dumps(_clean_numbers(dict(geometry)), indent=1))}</pre>",
        "<h2>Summary</h2>",
    ]
    summary_rows = _summary_rows(metrics)
    if summary_rows:
        parts.append(_table(["metric", "value", "floor", "note"], summary_rows))
    official = metrics.get("observables_calochallenge")
    singles, families = _observables_rows(metrics.get("observables", {}), official)
    parts.append("<h2>Observables</h2>")
    parts.append(
        "<p class='small'>Separation power (SP) on adaptive bins"
        + (", and on the official CaloChallenge bins (column <i>SP official</i>)" if official else "")
        + "; W1 in the observable's unit; each with its same-vs-same floor (mean ± spread).  Colours: grade "
        "against the floor (see How to read this).  Per-layer features are graded as a family, on the summed "
        "excess of all layers over their floors (the worst of 45 noisy layers is often 2-3 spreads up by "
        "chance); <i>layers failing</i> counts single layers more than 10 spreads above their floor.</p>"
    )
    header = ["observable", "description", "SP (adaptive)", "floor"]
    if official is not None:
        header.append("SP official")
    header += ["W1", "W1 floor", "bins"]
    parts.append(_table(header, singles))
    if families:
        parts.append("<h3>Per-layer features (CaloChallenge)</h3>")
        fam_header = ["feature", "description", "mean SP", "max SP", "worst layer", "layers failing (SP)"]
        if official is not None:
            fam_header += ["max SP official", "worst layer"]
        fam_header.append("layers failing (W1)")
        parts.append(_table(fam_header, families))
    if official:
        parts.append(_official_section(official))
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


def _official_section(official: Mapping[str, Mapping[str, Any]]) -> str:
    """The CaloChallenge-mode histograms: value, floor, binning and what fell outside the official range."""
    rows = []
    names = ["e_ratio", "cell_energy"]
    for name in names:
        m = official.get(name)
        if m is None:
            continue
        lo, hi = m.get("range", [None, None])
        rows.append(
            f"<tr><td class='name'>{html.escape(name)}</td>" + _graded_cell(m.get("separation_power"), _sp_grade(m))
            + _floor_text(m, "separation_power")
            + f"<td>{m.get('n_bins', '')} on [{_fmt(lo, 4)}, {_fmt(hi, 4)}]</td>"
            f"<td>{_fmt(m.get('outside_reference'), 3)} / {_fmt(m.get('outside_candidate'), 3)}</td>"
            f"<td>{'yes' if m.get('official_hist_mode') else 'helper only'}</td></tr>")
    text = (
        "<h3>CaloChallenge binning (official definitions)</h3><p class='small'>Each histogram binned as the "
        "official <code>evaluate.py</code> / <code>evaluate_plotting_helper.py</code> bin it for datasets 2 and 3, "
        "entries outside the range dropped, cells below 15.15 keV zeroed first.  <i>outside</i>: the fraction of "
        "reference / candidate entries the official range drops (for the cell spectrum: of the cells with energy). "
        "The cell-spectrum floor is not graded: cells of one shower are correlated.</p>"
    )
    header = ["histogram", "SP official", "floor", "bins", "outside (ref / cand)", "in evaluate.py -m hist"]
    return text + _table(header, rows)


def write_report(
    path: str | Path, metrics: Mapping[str, Any], figures: Mapping[str, Path], **kwargs: Any
) -> Path:
    """Write the self-contained report atomically (keyword arguments as :func:`render_report`)."""
    return atomic_write_text(path, render_report(metrics, figures, **kwargs))
