"""The night's quality-control page: one HTML file, self-contained.

Everything the page needs is in it or beside it: the style sheet is inline, there is no script,
no font or image from anywhere else, and the pictures are PNG files in the same directory,
referred to by their bare file names (copy or serve the directory as it is). Every text from the
registry or a header is escaped.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

__all__ = ["write_page", "fmt"]

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.4em 0 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.15em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; } .warn { color: #a60; }
.card { border: 1px solid #ddd; padding: 0.5em 1em; margin: 1em 0; border-radius: 4px; }
img.preview { max-width: 100%; border: 1px solid #ccc; }
img.thumb { width: 600px; max-width: 100%; border: 1px solid #ccc; }
.small { font-size: 0.85em; color: #555; }
"""


def fmt(value, digits: int = 4) -> str:
    """A number for a table cell: ``digits`` significant digits, '-' for None/NaN."""
    if value is None:
        return "-"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


def _e(value) -> str:
    return html.escape(fmt(value), quote=True)


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            raw = isinstance(cell, _Raw)
            text = cell.html if raw else _e(cell)
            cls = ' class="num"' if i in numeric else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class _Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, text: str):
        self.html = text


def _img(name: str | None, alt: str, cls: str) -> str:
    if not name:
        return ""
    src = html.escape(name, quote=True)
    return (f'<a href="{src}"><img class="{cls}" src="{src}" alt="{html.escape(alt, quote=True)}">'
            "</a>")  # fmt: skip


def _status(text, good: str) -> _Raw:
    if text is None:
        return _Raw("-")
    cls = "ok" if str(text).lower() == good.lower() else "warn"
    return _Raw(f'<span class="{cls}">{_e(text)}</span>')


def _master_section(m: dict) -> str:
    parts = [f'<div class="card" id="master-{m["id"]}">']
    standing = m.get("standing", "")
    if m["is_bad"]:
        flag = ' <span class="bad">MARKED BAD</span>'
    elif standing == "superseded":
        flag = f' <span class="warn">superseded by master {_e(m["superseded_by"])}</span>'
    else:
        flag = f' <span class="small">{_e(standing)}</span>'  # provisional or final
    parts.append(f"<h3>Master {m['id']}: {_e(m['label'])}{flag}</h3>")
    parts.append(f'<p class="small">{_e(m["file"])}, {m["n_inputs"]} inputs, effective '
                 f"DATE-OBS {_e(m['dateobs'])}</p>")  # fmt: skip
    if m["is_bad"]:
        parts.append(f'<p class="bad">Marked bad: {_e(m["bad_reason"])}</p>')
    if m["error"]:
        parts.append(f'<p class="bad">{_e(m["error"])}</p>')
    s = m["stats"]
    if s:
        unit = s["unit"] or "-"
        rows = [["unit", unit], ["good pixels", f"{s['n_good']} of {s['n_pixels']}"],
                ["median", s["median"]], ["3.5-rstd clipped mean", s["clipped_mean"]],
                ["rstd (noise, 1.4826 MAD)", s["rstd"]], ["median ERR", s["median_err"]],
                ["1st / 99th percentile", f"{fmt(s['p01'])} / {fmt(s['p99'])}"],
                ["pixels beyond 5 rstd", s["outliers"]]]  # fmt: skip
        if "biaslvl" in s:
            rows.append(["bias level of the inputs (BIASLVL, e-)", s["biaslvl"]])
        flagged = ", ".join(f"{k} {v}" for k, v in s["flagged"].items() if v)
        rows.append(["flagged pixels", flagged or "none"])
        parts.append(_table(["quantity", "value"], rows, numeric={1}))
    prev = m["previous"]
    c = m["comparison"]
    if prev:
        parts.append(f"<p>Previous master of this kind: {prev['id']} (night {_e(prev['dayobs'])},"
                     f" {_e(prev['file'])}).</p>")  # fmt: skip
    if c:
        what = "this / previous" if c["mode"] == "ratio" else "this - previous"
        rows = [["compared", what], ["pixels good in both", c["n_good"]],
                ["median", c["median"]], ["rstd", c["rstd"]],
                ["rstd of (difference / expected noise); 1 = agree", c["z_rstd"]],
                ["pixels changed by more than 5 sigma", c["changed"]]]  # fmt: skip
        parts.append(_table(["comparison", "value"], rows, numeric={1}))
    if m["comparison_note"]:
        parts.append(f'<p class="small">Comparison: {_e(m["comparison_note"])}</p>')
    if m.get("inputs"):
        levels = [f["level"] for f in m["inputs"] if f["level"] is not None]
        what = "bias level" if m["type"] == "BIAS" else "level (normalisation)"
        summary = f"{len(m['inputs'])} input frames"
        if levels:
            summary += (f", {what} {fmt(min(levels))} to {fmt(max(levels))} e-")
        rows = [[f["file"], f["level"]] for f in m["inputs"]]
        parts.append(f"<details><summary>{html.escape(summary)}</summary>"
                     + _table(["frame", f"{what} (e-)"], rows, numeric={1}) + "</details>")
    if m["left_out"]:
        parts.append("<p>Frames of this group not in the master:</p>")
        parts.append(_table(["frame", "state", "why"],
                            [[f["file"], f["state"], f["reason"]] for f in m["left_out"]]))
    else:
        parts.append('<p class="small">No frame of this group was left out.</p>')
    parts.append(_img(m["images"].get("preview"), f"preview of master {m['id']}", "preview"))
    parts.append(_img(m["images"].get("comparison"), f"master {m['id']} vs previous", "preview"))
    parts.append("</div>")
    return "\n".join(parts)


def _frames_section(frames: list[dict]) -> str:
    header = ["frame", "object", "filter", "exp (s)", "sources", "FWHM (\")", "sky (e-)",
              "CR pixels", "WCS", "WCS rms (\")", "matched", "SIP", "ZP (mag)", "ZP err",
              "photometry"]  # fmt: skip
    rows = []
    for f in frames:
        name = _Raw(f'<a href="#frame-{f["id"]}">{_e(f["file"])}</a>')
        if f["error"]:
            rows.append([name, f["object"], f["filter"], f["exptime_s"],
                         _Raw(f'<span class="bad">{_e(f["error"])}</span>')]
                        + [""] * (len(header) - 5))  # fmt: skip
            continue
        rows.append([name, f["object"], f["filter"], f["exptime_s"], f.get("sources"),
                     f.get("fwhm_arcsec"), f.get("background"), f.get("cosmic_ray_pixels"),
                     _status(f.get("wcs"), "solved"), f.get("wcs_rms_arcsec"),
                     f.get("wcs_n_matched"), f.get("wcs_sip_order"), f.get("zeropoint"),
                     f.get("zeropoint_err"), _status(f.get("photometry"), "OK")])  # fmt: skip
    parts = [_table(header, rows, numeric=set(range(3, 14)))]
    for f in frames:
        parts.append(f'<div class="card" id="frame-{f["id"]}"><h3>{_e(f["file"])}</h3>')
        notes = []
        if f.get("wcs") and f["wcs"] != "solved" or f.get("wcs_reason"):
            notes.append(f"astrometry: {_e(f.get('wcs'))}: {_e(f.get('wcs_reason'))}")
        if f.get("photometry") and f["photometry"] != "OK":
            notes.append(f"photometry: {_e(f['photometry'])}: {_e(f.get('photometry_reason'))}")
        if f.get("residual_n"):
            notes.append(f"residuals recomputed from the catalogue: {f['residual_n']} stars, rms "
                         f"{fmt(f['residual_rms_arcsec'])}\"")  # fmt: skip
        masters = [f"{k} {_e(f.get(k))}" for k in ("bias", "dark", "flat") if f.get(k)]
        if masters:
            notes.append("masters: " + ", ".join(masters))
        if notes:
            parts.append('<p class="small">' + "<br>".join(notes) + "</p>")
        parts.append(_img(f["images"].get("thumbnail"), f"thumbnail of {f['file']}", "thumb"))
        parts.append("</div>")
    return "\n".join(parts)


def render_page(data: dict) -> str:
    """The page's HTML for the content of ``qc.json``."""
    s = data["summary"]
    title = f"pylcogt QC, night {data['dayobs']}"
    if data["camera"]:
        title += f", {data['camera']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="small">Cameras: {_e(", ".join(data["cameras"]) or "none")}. Made '
        f"{_e(data['generated_at'])} by pylcogt {_e(data['pylcogt_version'])}"
        + (f" from {_e(data['database'])}" if data["database"] else "")
        + '. The numbers are also in <a href="qc.json">qc.json</a>.</p>',
    ]
    parts.append("<h2>Summary</h2>")
    rows = [["masters made this night", s["masters"]], ["of them marked bad", s["masters_bad"]],
            ["calibration frames left out of the masters", s["frames_left_out_of_masters"]],
            ["science frames reduced", s["frames_reduced"]],
            ["with an astrometric solution", s["frames_solved"]],
            ["with a zero point", s["frames_with_zeropoint"]],
            ["science frames not reduced", s["frames_not_reduced"]],
            ["products that could not be read", s["errors"]]]  # fmt: skip
    parts.append(_table(["", "count"], rows, numeric={1}))
    if not data["masters"] and not data["frames"] and not data["not_reduced"]:
        parts.append('<p class="warn">The registry has no master and no science frame for this '
                     "night (check the night, DAY-OBS, and --instrument).</p>")  # fmt: skip
    if data["errors"]:
        parts.append("<h2>Errors</h2><ul>"
                     + "".join(f'<li class="bad">{_e(t)}</li>' for t in data["errors"]) + "</ul>")
    parts.append("<h2>Masters</h2>")
    if data["masters"]:
        parts.append(_table(
            ["master", "type", "camera", "inputs", "left out", "median", "rstd", "vs previous"],
            [[_Raw(f'<a href="#master-{m["id"]}">{m["id"]}</a>'), m["label"], m["camera"],
              m["n_inputs"], len(m["left_out"]), (m["stats"] or {}).get("median"),
              (m["stats"] or {}).get("rstd"),
              (m["comparison"] or {}).get("z_rstd") if m["comparison"] else m["comparison_note"]]
             for m in data["masters"]], numeric={3, 4, 5, 6}))  # fmt: skip
        parts.extend(_master_section(m) for m in data["masters"])
    else:
        parts.append("<p>No master was made this night.</p>")
    parts.append("<h2>Science frames</h2>")
    trends = data.get("images", {}).get("trends")
    if trends:
        parts.append('<p class="small">The night at a glance: FWHM, sky, zero point and WCS rms '
                     "of every reduced frame against its DATE-OBS.</p>")  # fmt: skip
        parts.append(_img(trends, "trends of the night", "preview"))
    if data["frames"]:
        parts.append(_frames_section(data["frames"]))
    else:
        parts.append("<p>No reduced science frame this night.</p>")
    if data["not_reduced"]:
        parts.append("<h3>Not reduced</h3>")
        parts.append(_table(["frame", "camera", "state", "why"],
                            [[f["file"], f["camera"], f["state"], f["reason"]]
                             for f in data["not_reduced"]]))  # fmt: skip
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(path: Path, data: dict) -> Path:
    """Write :func:`render_page` to ``path`` (through a temporary file and a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    tmp.replace(path)
    return path
