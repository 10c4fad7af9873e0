"""Charts for the web pages: a Vega-Lite spec and an accessible table of the same figures, per chart.

The specs are drawn in the browser by the vendored Vega and Vega-Lite (static/vendor/, the library
``dvc plots`` uses too; static/charts.js renders each as SVG), from data the pipeline or the monitor
wrote; nothing here computes a metric. Each table holds what the chart shows (long curves: a point
per tenth of the way along), so the page reads without the picture too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AXIS_GREY = "#9aa5b1"
ACCENT = "#1d4ed8"
WARN = "#b45309"
HEIGHT = 240


@dataclass(frozen=True)
class Chart:
    """One figure: its id (the page's anchor), title, caption, Vega-Lite spec and table."""

    id: str
    title: str
    caption: str
    spec: dict[str, Any]
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def _frame(values: list[dict[str, Any]], height: int = HEIGHT) -> dict[str, Any]:
    return {"width": "container", "height": height, "autosize": {"type": "fit", "contains": "padding"},
            "data": {"values": values}, "config": {"font": "system-ui, sans-serif", "view": {"stroke": None}}}


def _q(name: str, title: str, fmt: str = ".2f", domain: list[float] | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"field": name, "type": "quantitative", "title": title, "axis": {"format": fmt}}
    if domain is not None:
        channel["scale"] = {"domain": domain}
    return channel


def _diagonal(x_title: str, y_title: str) -> dict[str, Any]:
    return {"data": {"values": [{"a": 0, "b": 0}, {"a": 1, "b": 1}]},
            "mark": {"type": "line", "strokeDash": [4, 4], "color": AXIS_GREY},
            "encoding": {"x": _q("a", x_title, domain=[0, 1]), "y": _q("b", y_title, domain=[0, 1])}}


def _tenths(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """About eleven points along a long curve (first, every tenth, last) for its table."""
    if len(points) <= 11:
        return points
    picks = sorted({round(i * (len(points) - 1) / 10) for i in range(11)})
    return [points[i] for i in picks]


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def roc(points: list[dict[str, float]], auc: float | None) -> Chart:
    values = [{**p, "i": i} for i, p in enumerate(points)]
    curve = {"mark": {"type": "line", "color": ACCENT, "strokeWidth": 2},
             "encoding": {"x": _q("fpr", "False positive rate", domain=[0, 1]),
                          "y": _q("tpr", "True positive rate", domain=[0, 1]), "order": {"field": "i"}}}
    spec = {**_frame(values), "layer": [_diagonal("False positive rate", "True positive rate"), curve]}
    return Chart("roc", "ROC curve", f"Test split; ROC-AUC {_f(auc)}." if auc is not None else "Test split.",
                 spec, ["False positive rate", "True positive rate", "Threshold"],
                 [[_f(p["fpr"]), _f(p["tpr"]), _f(p["threshold"])] for p in _tenths(points)])


def precision_recall(points: list[dict[str, float]], pr_auc: float | None) -> Chart:
    values = [{**p, "i": i} for i, p in enumerate(points)]
    spec = {**_frame(values), "mark": {"type": "line", "color": ACCENT, "strokeWidth": 2},
            "encoding": {"x": _q("recall", "Recall", domain=[0, 1]), "y": _q("precision", "Precision", domain=[0, 1]),
                         "order": {"field": "i"}}}
    caption = f"Test split; PR-AUC {_f(pr_auc)}." if pr_auc is not None else "Test split."
    return Chart("precision-recall", "Precision and recall", caption, spec, ["Recall", "Precision"],
                 [[_f(p["recall"]), _f(p["precision"])] for p in _tenths(points)])


def calibration(bins: list[dict[str, float]], ece: float | None) -> Chart:
    dots = {"mark": {"type": "line", "point": True, "color": ACCENT},
            "encoding": {"x": _q("mean_predicted", "Mean predicted probability", domain=[0, 1]),
                         "y": _q("observed_rate", "Observed default rate", domain=[0, 1])}}
    spec = {**_frame(bins), "layer": [_diagonal("Mean predicted probability", "Observed default rate"), dots]}
    caption = "Test split, in bins of equal count; on the dashed line a probability means what it says."
    if ece is not None:
        caption += f" Expected calibration error {_f(ece, 4)}."
    return Chart("calibration", "Calibration", caption, spec, ["Mean predicted", "Observed default rate"],
                 [[_pct(b["mean_predicted"]), _pct(b["observed_rate"])] for b in bins])


def confusion(cells: dict[str, int], threshold: float | None) -> Chart:
    values = [{"actual": "repaid", "decision": "approved", "n": cells["tn"]},
              {"actual": "repaid", "decision": "declined", "n": cells["fp"]},
              {"actual": "defaulted", "decision": "approved", "n": cells["fn"]},
              {"actual": "defaulted", "decision": "declined", "n": cells["tp"]}]
    order = {"x": ["approved", "declined"], "y": ["repaid", "defaulted"]}
    encoding = {"x": {"field": "decision", "type": "nominal", "title": "At the threshold", "sort": order["x"],
                      "axis": {"labelAngle": 0}},
                "y": {"field": "actual", "type": "nominal", "title": "Actually", "sort": order["y"]}}
    spec = {**_frame(values, 200), "encoding": encoding, "layer": [
        {"mark": "rect", "encoding": {"color": {"field": "n", "type": "quantitative", "legend": None,
                                                "scale": {"scheme": "blues"}}}},
        {"mark": {"type": "text", "fontSize": 16, "fontWeight": "bold"},
         "encoding": {"text": {"field": "n", "type": "quantitative", "format": ","},
                      "color": {"condition": {"test": f"datum.n > {max(cells.values()) / 2}", "value": "white"},
                                "value": "black"}}}]}
    at = f" at the threshold {_f(threshold, 4)}" if threshold is not None else ""
    return Chart("confusion", "Confusion matrix", f"Test split, declines{at} (referrals counted as approvals).",
                 spec, ["Actually", "Approved", "Declined"],
                 [["Repaid", f"{cells['tn']:,}", f"{cells['fp']:,}"],
                  ["Defaulted", f"{cells['fn']:,}", f"{cells['tp']:,}"]])


def importance(rows: list[dict[str, Any]], labels: dict[str, str], top: int = 15) -> Chart:
    values = [{"feature": labels.get(r["feature"], r["feature"]), "gain": r["gain"]} for r in rows[:top]]
    spec = {**_frame(values, max(160, 22 * len(values))), "mark": {"type": "bar", "color": ACCENT},
            "encoding": {"y": {"field": "feature", "type": "nominal", "title": None, "sort": "-x"},
                         "x": _q("gain", "Total gain", ",.0f")}}
    return Chart("importance", "Feature importance", "LightGBM's total split gain per input (largest first).",
                 spec, ["Input", "Total gain"], [[v["feature"], f"{v['gain']:,.0f}"] for v in values])


def approval_by_group(key: str, attribute: dict[str, Any], floor: float) -> Chart:
    """Approval rate per group, with the four-fifths line: ``floor`` x the most approved judged group's rate."""
    groups = attribute["groups"]
    values = [{"group": name, "approval_rate": g["approval_rate"], "judged": "judged" if g["judged"] else
               "too few to judge"} for name, g in groups.items()]
    top = max((g["approval_rate"] for g in groups.values() if g["judged"]), default=None)
    layers: list[dict[str, Any]] = [{"mark": "bar", "encoding": {
        "y": {"field": "group", "type": "nominal", "title": None},
        "x": _q("approval_rate", "Approval rate", ".0%", [0, 1]),
        "color": {"field": "judged", "type": "nominal", "title": None,
                  "scale": {"domain": ["judged", "too few to judge"], "range": [ACCENT, AXIS_GREY]},
                  "legend": {"orient": "bottom"}}}}]
    caption = f"Test split, at the threshold. Groups of {attribute['label'].lower()}."
    if top is not None:
        line = floor * top
        layers.append({"data": {"values": [{"line": line}]}, "mark": {"type": "rule", "color": WARN,
                                                                      "strokeWidth": 2, "strokeDash": [6, 3]},
                       "encoding": {"x": {"field": "line", "type": "quantitative"}}})
        caption += (f" Dashed: the four-fifths line, {floor:g} x the most approved group's rate ({_pct(line)}); "
                    f"lowest adverse-impact ratio {_f(attribute['min_adverse_impact_ratio'])}.")
    spec = {**_frame(values, max(120, 30 * len(values))), "layer": layers}
    return Chart(f"approval-{key}", f"Approval rate by {attribute['label'].lower()}", caption, spec,
                 ["Group", "Rows", "Approval rate", "Adverse-impact ratio"],
                 [[name, f"{g['rows']:,}", _pct(g["approval_rate"]),
                   _f(g["adverse_impact_ratio"]) if g.get("adverse_impact_ratio") is not None else "not judged"]
                  for name, g in groups.items()])


def error_rates_by_group(key: str, attribute: dict[str, Any], max_gap: float) -> Chart:
    """Decline rates among applicants who repaid (equal opportunity) and who defaulted, per group."""
    groups = attribute["groups"]
    values = [{"group": name, "rate": g[field_], "kind": kind}
              for name, g in groups.items()
              for field_, kind in (("decline_rate_repaid", "declined, repaid"),
                                   ("decline_rate_defaulted", "declined, defaulted"))
              if g.get(field_) is not None]
    spec = {**_frame(values, max(140, 36 * len(groups))), "mark": "bar", "encoding": {
        "y": {"field": "group", "type": "nominal", "title": None},
        "yOffset": {"field": "kind", "type": "nominal"},
        "x": _q("rate", "Decline rate", ".0%", [0, 1]),
        "color": {"field": "kind", "type": "nominal", "title": None,
                  "scale": {"domain": ["declined, repaid", "declined, defaulted"], "range": [WARN, ACCENT]},
                  "legend": {"orient": "bottom"}}}}
    gap = attribute.get("equal_opportunity_gap")
    caption = (f"Among applicants who repaid, the gap between the most and least declined judged groups is "
               f"{_pct(gap)} (limit {_pct(max_gap)})." if gap is not None else "Too few rows to judge a gap.")
    return Chart(f"errors-{key}", f"Error rates by {attribute['label'].lower()}", caption, spec,
                 ["Group", "Declined, repaid", "Declined, defaulted"],
                 [[name, _pct(g["decline_rate_repaid"]) if g.get("decline_rate_repaid") is not None else "-",
                   _pct(g["decline_rate_defaulted"]) if g.get("decline_rate_defaulted") is not None else "-"]
                  for name, g in groups.items()])


# --- monitoring ---------------------------------------------------------------------------------------------

BAND_COLOURS = {"none": "#94a3b8", "moderate": WARN, "significant": "#b42318"}


def psi_by_feature(features: dict[str, dict[str, Any]], labels: dict[str, str], moderate: float,
                   significant: float) -> Chart:
    """PSI per input as bars, coloured by band, with the moderate and significant lines."""
    values = sorted(({"feature": labels.get(name, name), "psi": f["psi"], "band": f["band"],
                      "fired": ", ".join(f.get("fired_by") or []) or "none"} for name, f in features.items()),
                    key=lambda v: -v["psi"])
    top = max([significant * 1.2, *(v["psi"] for v in values)])
    bars = {"mark": "bar", "encoding": {
        "y": {"field": "feature", "type": "nominal", "title": None, "sort": "-x"},
        "x": _q("psi", "PSI", ".2f", [0, top]),
        "color": {"field": "band", "type": "nominal", "title": "Band",
                  "scale": {"domain": list(BAND_COLOURS), "range": list(BAND_COLOURS.values())},
                  "legend": {"orient": "bottom"}}}}
    lines = {"data": {"values": [{"at": moderate}, {"at": significant}]},
             "mark": {"type": "rule", "strokeDash": [6, 3], "color": "#52606d"},
             "encoding": {"x": {"field": "at", "type": "quantitative"}}}
    spec = {**_frame(values, max(160, 22 * len(values))), "layer": [bars, lines]}
    return Chart("psi", "Drift per input (PSI)",
                 f"Dashed: {moderate:g} (moderate) and {significant:g} (significant). A feature is flagged when its "
                 f"band or its two-sample test fires.", spec, ["Input", "PSI", "Band", "Fired"],
                 [[v["feature"], _f(v["psi"]), v["band"], v["fired"]] for v in values])


def score_distribution(bins: list[dict[str, Any]], psi: float) -> Chart:
    """The score's share per bin (the reference's quantile bins), batch against reference."""
    values = [{"bin": b["bin"], "i": i, "share": b[side], "set": name} for i, b in enumerate(bins)
              for side, name in (("reference", "training reference"), ("batch", "latest batch"))]
    spec = {**_frame(values), "mark": "bar", "encoding": {
        "x": {"field": "bin", "type": "ordinal", "title": "Predicted probability (reference quantile bins)",
              "sort": {"field": "i"}, "axis": {"labelAngle": -40, "labelLimit": 90}},
        "xOffset": {"field": "set", "type": "nominal"},
        "y": _q("share", "Share of rows", ".0%"),
        "color": {"field": "set", "type": "nominal", "title": None,
                  "scale": {"domain": ["training reference", "latest batch"], "range": [AXIS_GREY, ACCENT]},
                  "legend": {"orient": "bottom"}}}}
    return Chart("score-distribution", "Score distribution", f"PSI of the score {_f(psi)}.", spec,
                 ["Bin", "Reference", "Batch"], [[b["bin"], _pct(b["reference"]), _pct(b["batch"])] for b in bins])


def auc_by_period(periods: list[dict[str, Any]], reference: float | None, max_drop: float) -> Chart:
    """ROC-AUC per period of scoring time against the model's test ROC-AUC and the decay line."""
    values = [{"period": p["period"], "roc_auc": p["roc_auc"], "rows": p["rows"]} for p in periods
              if p.get("roc_auc") is not None]
    layers: list[dict[str, Any]] = [{"mark": {"type": "line", "point": True, "color": ACCENT}, "encoding": {
        "x": {"field": "period", "type": "ordinal", "title": None, "axis": {"labelAngle": -40}},
        "y": _q("roc_auc", "ROC-AUC", ".2f", [0.5, 1])}}]
    caption = "Scored rows whose outcomes have matured, per period of scoring time."
    if reference is not None:
        layers.append({"data": {"values": [{"at": reference}, {"at": reference - max_drop}]},
                       "mark": {"type": "rule", "strokeDash": [6, 3], "color": WARN},
                       "encoding": {"y": {"field": "at", "type": "quantitative"}}})
        caption += (f" Dashed: the model's test ROC-AUC {_f(reference)} and the decay line "
                    f"{_f(reference - max_drop)} (monitoring.max_auc_drop {max_drop:g}).")
    spec = {**_frame(values), "layer": layers}
    return Chart("auc-by-period", "ROC-AUC by period", caption, spec, ["Period", "Rows", "ROC-AUC", "Decay"],
                 [[p["period"], f"{p['rows']:,}", _f(p["roc_auc"]) if p.get("roc_auc") is not None else "-",
                   "yes" if p.get("decay") else "no"] for p in periods])


def default_rate_by_band(bands: dict[str, dict[str, Any]]) -> Chart:
    values = [{"band": name, "default_rate": b["default_rate"], "rows": b["rows"]} for name, b in bands.items()
              if b.get("default_rate") is not None]
    spec = {**_frame(values, 180), "mark": {"type": "bar", "color": ACCENT}, "encoding": {
        "x": {"field": "band", "type": "nominal", "title": "Decision", "sort": list(bands),
              "axis": {"labelAngle": 0}},
        "y": _q("default_rate", "Observed default rate", ".0%")}}
    return Chart("default-rate-by-band", "Default rate per decision band",
                 "Matured outcomes of the scored rows, by the decision they were given.", spec,
                 ["Decision", "Rows", "Share", "Default rate"],
                 [[name, f"{b['rows']:,}", _pct(b["share"]) if b.get("share") is not None else "-",
                   _pct(b["default_rate"]) if b.get("default_rate") is not None else "-"]
                  for name, b in bands.items()])


def traffic(endpoints: list[dict[str, Any]], minutes: float) -> Chart:
    """Requests per minute and latency quantiles per endpoint, from the service's own metrics."""
    values = [{"endpoint": e["endpoint"], "quantile": q, "ms": e[key] * 1000} for e in endpoints
              for key, q in (("p50", "p50"), ("p95", "p95"), ("p99", "p99")) if e[key] is not None]
    spec = {**_frame(values, max(140, 40 * len(endpoints))), "mark": "bar", "encoding": {
        "y": {"field": "endpoint", "type": "nominal", "title": None},
        "yOffset": {"field": "quantile", "type": "nominal"},
        "x": {"field": "ms", "type": "quantitative", "title": "Latency (ms)"},
        "color": {"field": "quantile", "type": "nominal", "title": None, "legend": {"orient": "bottom"},
                  "scale": {"domain": ["p50", "p95", "p99"], "range": ["#93c5fd", ACCENT, "#1e3a8a"]}}}}

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f}"

    return Chart("traffic", "Requests and latency",
                 f"Since the service started {minutes:,.0f} minutes ago (every worker); latency quantiles "
                 f"estimated from the histogram's buckets.", spec,
                 ["Endpoint", "Requests", "Per minute", "5xx", "p50 ms", "p95 ms", "p99 ms"],
                 [[e["endpoint"], f"{e['requests']:,}", f"{e['per_minute']:,.1f}", f"{e['errors']:,}",
                   ms(e["p50"]), ms(e["p95"]), ms(e["p99"])] for e in endpoints])
