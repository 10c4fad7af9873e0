"""The drift report as one self-contained HTML page, rendered from drift.json's own numbers.

The page and ``metrics/drift.json`` cannot disagree on which features drifted: the page
is drawn from that summary (same PSI, bins and bands, the same tests and which of them
fired, the same flag), with no method, sample or threshold of its own. No scripts, no
external assets: it opens anywhere.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

BAND_COLOURS = {"none": "#2e7d32", "moderate": "#ef6c00", "significant": "#c62828"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.band{color:#fff;border-radius:.25rem;padding:0 .4rem;font-size:.85rem}
.flag{font-size:1.1rem;font-weight:600}
.bars td{border:none;padding:.1rem .4rem;font-size:.8rem}
.bar{height:.55rem;display:block}
.ref{background:#90a4ae} .cur{background:#1e88e5}
details{margin:.3rem 0}
"""


def _band(band: str) -> str:
    return f'<span class="band" style="background:{BAND_COLOURS.get(band, "#555")}">{escape(band)}</span>'


def _bins(bins: list[dict[str, Any]]) -> str:
    widest = max([max(b["reference"], b["batch"]) for b in bins] or [1.0]) or 1.0
    rows = []
    for b in bins:
        ref, cur = 100 * b["reference"] / widest, 100 * b["batch"] / widest
        rows.append(
            f'<tr><td>{escape(str(b["bin"]))}</td>'
            f'<td class="num">{b["reference"]:.3f}</td><td class="num">{b["batch"]:.3f}</td>'
            f'<td style="width:16rem"><span class="bar ref" style="width:{ref:.1f}%"></span>'
            f'<span class="bar cur" style="width:{cur:.1f}%"></span></td></tr>')
    return ('<table class="bars"><tr><th>bin</th><th>reference</th><th>batch</th><th></th></tr>'
            + "".join(rows) + "</table>")


def _test(entry: dict[str, Any]) -> str:
    """The second test's figures: 'KS D 0.139, p 4e-63' or 'chi-square JS 0.112, p 3e-53'."""
    test = entry.get("test") or {}
    if test.get("statistic") is None:
        return "not testable" if test else ""
    effect = f"D {test['statistic']:.3f}" if test["name"] == "ks" else f"JS {test['js_distance']:.3f}"
    return escape(f"{'KS' if test['name'] == 'ks' else test['name']} {effect}, p {test['p_value']:.2g}")


def _row(name: str, entry: dict[str, Any], drifted: bool) -> str:
    return (f'<tr><td>{escape(name)}</td><td>{escape(entry["type"])}</td>'
            f'<td class="num">{entry["psi"]:.4f}</td><td>{_band(entry["band"])}</td>'
            f'<td>{_test(entry)}</td><td>{escape(", ".join(entry.get("fired_by", [])))}</td>'
            f'<td>{"drifted" if drifted else ""}</td></tr>')


def _default_rates(summary: dict[str, Any]) -> list[str]:
    """Per categorical feature with outcomes: each code's default rate, reference against batch."""
    outcomes = summary.get("outcomes")
    if not outcomes:
        return []
    parts = [f"<h2>Default rates per category ({outcomes['rows']:,} batch rows with outcomes)</h2>",
             "<table><tr><th>feature</th><th>category</th><th>reference rate</th><th>batch rate</th>"
             "<th>rows (reference / batch)</th><th>p</th><th></th></tr>"]
    for name, entry in summary["features"].items():
        for c in (entry.get("default_rate") or {}).get("categories", []):
            parts.append(f'<tr><td>{escape(name)}</td><td>{escape(c["category"])}</td>'
                         f'<td class="num">{c["reference_rate"]:.3f}</td><td class="num">{c["batch_rate"]:.3f}</td>'
                         f'<td class="num">{c["reference_rows"]:,} / {c["batch_rows"]:,}</td>'
                         f'<td class="num">{c["p_value"]:.2g}</td><td>{"moved" if c["fired"] else ""}</td></tr>')
    parts.append("</table>")
    return parts


def render(summary: dict[str, Any]) -> str:
    """The page for one drift summary (what ``compare`` and ``run_drift`` put in drift.json)."""
    t = summary["thresholds"]
    drifted = set(summary["drifted_features"])
    order = sorted(summary["features"], key=lambda n: -summary["features"][n]["psi"])
    batch = summary.get("batch", {})
    model = summary.get("model", {})
    flag = ("FLAGGED: " + (", ".join(summary["drifted_features"]) or "")
            + (" and the score" if summary["score_drifted"] else "")) if summary["flag"] else "no drift flagged"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Drift report: {escape(str(summary.get('dataset', '')))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Drift report: {escape(str(summary.get('dataset', '')))}</h1>",
        f'<p class="flag">{escape(flag)}</p>',
        "<table>",
        f"<tr><th>batch</th><td>{escape(str(batch.get('source', '')))}: {summary['n_batch']:,} rows</td></tr>",
        f"<tr><th>reference</th><td>{summary['n_reference']:,} training rows</td></tr>",
        f"<tr><th>model</th><td>{escape(str(model.get('name', '')))} v{escape(str(model.get('version', '')))}"
        "</td></tr>",
        f"<tr><th>created</th><td>{escape(str(summary.get('created_at', '')))}</td></tr>",
        f"<tr><th>method</th><td>PSI over {t['bins']} reference quantile bins (categories: one bin each), "
        f"shares floored at {t['epsilon']:g}; bands: moderate &ge; {t['moderate']:g}, significant &ge; "
        f"{t['significant']:g}; a feature at or above <b>{escape(t['flag_band'])}</b> counts as drifted. "
        + (f"Also Kolmogorov-Smirnov (numbers) or chi-square (codes), firing at p &lt; {t['alpha']:g} over all "
           f"{t['tests']} tests (Bonferroni) with D &ge; {t['ks_min_statistic']:g} or Jensen-Shannon distance "
           f"&ge; {t['js_min_distance']:g}; with outcomes, default rates per category "
           f"(&ge; {t['default_rate_min_difference']:g} apart, significant)" if "alpha" in t else "")
        + "</td></tr>",
        "</table>",
        "<h2>Drift per feature</h2>",
        "<table><tr><th>feature</th><th>type</th><th>PSI</th><th>band</th><th>second test</th><th>fired</th>"
        "<th></th></tr>",
        _row("score (probability of default)", summary["score"], summary["score_drifted"]),
        *(_row(name, summary["features"][name], name in drifted) for name in order),
        "</table>",
        *_default_rates(summary),
        "<h2>Distributions (shares of rows per bin)</h2>",
        f"<details open><summary>score: PSI {summary['score']['psi']:.4f}</summary>"
        f"{_bins(summary['score']['bins'])}</details>",
        *(f"<details{' open' if name in drifted else ''}><summary>{escape(name)}: PSI "
          f"{summary['features'][name]['psi']:.4f} {_band(summary['features'][name]['band'])}</summary>"
          f"{_bins(summary['features'][name]['bins'])}</details>" for name in order),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(summary), encoding="utf-8")
    return path
