"""QA outputs: ``qa.csv``, ``qa.json``, ``failed.csv``, ``skipped.csv`` and ``report.html``.

``report.html`` is self-contained (viewable offline, e.g. attached to a ticket): styles inline
and every image a base64 PNG ``data:`` URI. Flagged series get thumbnails of their worst slices
and the saliency overlay (where the score is most sensitive), made by :func:`slice_assets`.
Nothing here writes patient identifiers or free text from the headers: series are named by
their anonymised key and a hash of their SeriesDescription
(:func:`rankiq.service.io.description_label`).
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.atomic import atomic_write, write_json, write_text

QA_COLUMNS = ("series_key", "description", "contrast", "protocol", "slices", "blank_slices",
              "median", "p90", "mean", "worst", "worst_slices", "statistic", "threshold",
              "status", "flagged", "rule", "reason", "robust_z", "protocol_series", "in_range",
              "range_reasons", "model", "model_version", "mode")
FAILED_COLUMNS = ("source", "reason", "message")
SKIPPED_COLUMNS = ("series_key", "description", "modality", "instances", "reason", "source")


def _png(rgb: np.ndarray) -> str:
    from rankiq.service.overlay import rgb_png

    return base64.b64encode(rgb_png(rgb)).decode("ascii")


def _gray(image: np.ndarray) -> np.ndarray:
    """float ``(H, W)`` -> uint8 ``(H, W)`` scaled to its 99.5th percentile."""
    top = float(np.percentile(image, 99.5)) or float(image.max()) or 1.0
    return (np.clip(image / top, 0, 1) * 255).astype(np.uint8)


def _downsample(x: np.ndarray, size: int) -> np.ndarray:
    """Integer-factor box downsampling of ``(H, W)`` to about ``size`` pixels on the long side."""
    f = max(1, int(np.ceil(max(x.shape) / size)))
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    return x[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def slice_assets(image: np.ndarray, saliency: np.ndarray | None, size: int = 160
                 ) -> dict[str, str]:
    """Thumbnail and saliency overlay of one slice as base64 PNGs.

    Args:
        image: float ``(H, W)`` (the normalised network input image of the slice).
        saliency: float ``(H, W)`` d score / d input at the same grid, or ``None``.
        size: thumbnail long side in pixels (approximate, integer downsampling).

    Returns:
        ``{"thumb": b64}`` plus ``"overlay"`` (|saliency| in red over the image) when given.
    """
    img = _downsample(np.abs(np.asarray(image, np.float64)), size)
    g = _gray(img)
    out = {"thumb": _png(np.stack([g] * 3, axis=-1))}
    if saliency is not None:
        s = _downsample(np.abs(np.asarray(saliency, np.float64)), size)
        top = float(np.percentile(s, 99.5)) or float(s.max()) or 1.0
        a = np.clip(s / top, 0, 1)[..., None] * 0.7
        base = np.stack([g] * 3, axis=-1).astype(np.float64)
        red = np.array([255.0, 40.0, 0.0])
        out["overlay"] = _png(((1 - a) * base + a * red).astype(np.uint8))
    return out


def qa_row(row: dict[str, Any]) -> dict[str, Any]:
    """A journal ``done`` row -> the flat per-series record of qa.csv / qa.json.

    Columns (qa.csv, in this order): ``series_key``, ``description`` (a hash of the
    SeriesDescription: :func:`rankiq.service.io.description_label`), ``contrast``,
    ``protocol`` (:func:`rankiq.service.qa.aggregate.protocol_key`), ``slices``,
    ``blank_slices``, ``median``/``p90``/``mean``/``worst`` (model score units, lower is
    better), ``worst_slices``, ``statistic`` (the one thresholds apply to), ``threshold`` (the
    threshold of the rule that fired, else the family's), ``status`` (``passed``, ``flagged``,
    ``not_assessable``), ``flagged``, ``rule`` (``model_threshold``, ``site_threshold``,
    ``archive_outlier``; empty when not flagged), ``reason``, ``robust_z`` (within the
    protocol group, empty under the group minimum), ``protocol_series`` (its size),
    ``in_range``, ``range_reasons`` (why the model cannot assess it), ``model``,
    ``model_version``, ``mode``. Rows of journals from earlier versions get the defaults.
    """
    from rankiq.service.io import description_label
    from rankiq.service.qa.aggregate import protocol_key

    info, res = row["info"], row["result"]
    agg = res["aggregate"]
    status = res.get("status") or ("flagged" if res["flagged"] else "passed")
    value = res.get("statistic_value", agg.get(res["statistic"]))
    return {
        "series_key": row["series_key"],
        "description": description_label(info.get("description", "")),
        "contrast": info.get("contrast", "other"),
        "protocol": protocol_key(info),
        "slices": agg["slices"],
        "blank_slices": agg["blank"],
        "median": _num(agg["median"]),
        "p90": _num(agg["p90"]),
        "mean": _num(agg["mean"]),
        "worst": _num(agg["worst"]),
        "worst_slices": agg["worst_slices"],
        "statistic": res["statistic"],
        "statistic_value": _num(value),
        "threshold": res["threshold"],
        "status": status,
        "flagged": bool(res["flagged"]),
        "rule": res.get("rule", "model_threshold" if res["flagged"] else ""),
        "reason": res["reason"],
        "robust_z": None,
        "protocol_series": 0,
        "in_range": bool(res.get("in_range", True)),
        "range_reasons": list(res.get("range_reasons", [])),
        "model": res["model"],
        "model_version": res["model_version"],
        "mode": res.get("mode", "no-reference"),  # "reference" for series mapped to a reference
    }


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _csv_value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return " ".join(str(i) for i in v)
    return "" if v is None else v


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """CSV with a header row; booleans as true/false, lists space-separated."""
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in columns})


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}tr.flag td{background:#fde8e4}tr.na td{background:#eef0f6;color:#555}
.num{text-align:right}
section{margin:1.5em 0;padding:0.5em 1em;border-left:4px solid #d33}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}
img{image-rendering:pixelated;border:1px solid #999}
"""


def render_html(doc: dict[str, Any], assets: dict[str, dict[str, Any]]) -> str:
    """The offline HTML report.

    Args:
        doc: the qa.json document (``series``, ``skipped``, ``failed``, ``summary``, ``model``).
        assets: series key -> ``{"slices": [{"index", "score", "thumb", "overlay"}]}``.
    """
    e = html.escape
    s = doc["summary"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>RankIQ QA report</title>",
        f"<style>{_CSS}</style></head><body><h1>RankIQ QA report</h1>",
        f"<p>Model <b>{e(doc['model']['name'])}</b> version {e(str(doc['model']['version']))}; "
        f"statistic <b>{e(doc['thresholds']['statistic'])}</b>, thresholds from "
        f"{e(doc['thresholds']['source'])}; lower scores are better.</p>",
        f"<p>{s['series']} series scored, <b>{s['flagged']} flagged</b>"
        + "".join(f" ({e(k)}: {v})" for k, v in (s.get("rules") or {}).items())
        + f", {s.get('not_assessable', 0)} not assessable (outside what the model was trained "
        f"on), {s['skipped']} skipped, {s['failed_inputs']} unreadable inputs, "
        f"{s['slices']} slices.</p>",
        _archive_rule_note(doc.get("archive_rule")),
        "<h2>Series</h2><table><tr>",
        "".join(f"<th>{c}</th>" for c in ("series", "description", "contrast", "slices",
                                          "median", "p90", "worst", "threshold", "status",
                                          "rule", "robust z", "reason")),
        "</tr>",
    ]
    rank = {"flagged": 0, "not_assessable": 1}
    ordered = sorted(doc["series"], key=lambda r: (rank.get(r["status"], 2), r["series_key"]))
    for r in ordered:
        cls = {"flagged": " class='flag'", "not_assessable": " class='na'"}.get(r["status"], "")
        link = (f"<a href='#s-{e(r['series_key'])}'>{e(r['series_key'])}</a>" if r["flagged"]
                else e(r["series_key"]))
        cells = [link, e(r["description"]), e(r["contrast"]), str(r["slices"])]
        cells += [_fmt(r[k]) for k in ("median", "p90", "worst", "threshold")]
        cells += [e(r["status"].replace("_", " ")), e(r["rule"]), _fmt(r.get("robust_z")),
                  e(r["reason"])]
        parts.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    flagged = [r for r in ordered if r["flagged"]]
    if flagged:
        parts.append("<h2>Flagged series: worst slices</h2>")
    for r in flagged:
        parts.append(f"<section id='s-{e(r['series_key'])}'><h3>{e(r['series_key'])} "
                     f"{e(r['description'])} ({e(r['contrast'])})</h3><p>{e(r['reason'])}</p>")
        for sl in (assets.get(r["series_key"]) or {}).get("slices", []):
            for kind, label in (("thumb", "image"), ("overlay", "saliency")):
                if kind in sl:
                    parts.append(
                        f"<figure><img alt='slice {sl['index']} {label}' "
                        f"src='data:image/png;base64,{sl[kind]}'><figcaption>slice "
                        f"{sl['index']} {label}, score {_fmt(sl['score'])}</figcaption></figure>")
        parts.append("</section>")
    parts += _html_table("Skipped series", ("series", "description", "instances", "reason"),
                         [(r["series_key"] or r.get("source", ""), r["description"],
                           r["instances"], r["reason"]) for r in doc["skipped"]])
    parts += _html_table("Unreadable inputs", ("source", "reason", "message"),
                         [(r["source"], r["reason"], r["message"]) for r in doc["failed"]])
    parts.append("</body></html>\n")
    return "".join(parts)


def _archive_rule_note(rule: dict[str, Any] | None) -> str:
    """One sentence stating the archive-relative rule of the run."""
    if not rule:
        return ""
    if not rule["z"]:
        return "<p>Archive-relative rule off.</p>"
    return (f"<p>Archive-relative rule: a series is flagged when the robust z of "
            f"log({html.escape(rule['statistic'])}) among the series of its protocol "
            f"({html.escape(rule['protocol'])}; median and 1.4826 MAD, groups of at least "
            f"{rule['min_group']}) is above {rule['z']:g}.</p>")


def _fmt(x: Any) -> str:
    return "" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def write_reports(out_dir: Path, doc: dict[str, Any], assets: dict[str, dict[str, Any]]) -> None:
    """Write qa.csv, qa.json, failed.csv, skipped.csv and report.html into ``out_dir``."""
    write_csv(out_dir / "qa.csv", QA_COLUMNS, doc["series"])
    write_json(out_dir / "qa.json", doc, indent=1)
    write_csv(out_dir / "failed.csv", FAILED_COLUMNS, doc["failed"])
    write_csv(out_dir / "skipped.csv", SKIPPED_COLUMNS, doc["skipped"])
    write_text(out_dir / "report.html", render_html(doc, assets))


def _html_table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """An escaped ``<h2>`` + ``<table>`` of ``rows`` (nothing when there are none)."""
    if not rows:
        return []
    e = html.escape
    out = [f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
           + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</table>")
    return out
