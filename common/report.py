"""Pictures and an HTML index that let a reader check each measurement by eye.

For one study, :func:`write_study_report` draws the perpendicular cross-section at the maximum (the CT
resampled on that plane, the measured outline, the caliper and its value) and an overview (coronal and
sagittal views with the outline, the centreline and the level of the maximum). :func:`write_index` writes
``index.html``: one row per study, every text escaped, no external resources.

Matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fedaaa.common.clinical import DISCLAIMER, diameter_category
from fedaaa.common.measure import Measurement, component_field, measured_outline, plane_basis, sample_plane
from fedaaa.common.text import printable

__all__ = ["safe_stem", "write_index", "write_study_report"]

TITLE_LIMIT = 80  # a study name in a picture's title
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OUTLINE = "#ffb000"  # the measured outline (amber: seen on grey, distinct from the caliper)
_CALIPER = "#00e5ff"  # the caliper (cyan)
_LEFT_OUT = "#b0b0b0"  # segmented, but left out of the measurement (grey, dashed)
_CENTRELINE = "#ff3b6b"  # the centreline (pink-red)
_OUTSIDE = "#1a2b4a"  # pixels outside the scanned grid


def safe_stem(name: str) -> str:
    """A file-name stem for study ``name``: letters, digits, ``.``, ``_``, ``-`` only, at most ~70 characters;
    a name that had to change gets a short hash of the original, so that two names never share files."""
    stem = _UNSAFE.sub("_", str(name)).strip("._") or "study"
    if stem != name or len(stem) > 60:
        digest = hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem = f"{stem[:60]}-{digest}"
    return stem


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grey(window: tuple[float, float]) -> tuple[Any, float, float]:
    from matplotlib import colormaps

    cmap = colormaps["gray"].with_extremes(bad=_OUTSIDE)
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"window must be two finite numbers, low < high, not {window!r}")
    return cmap, lo, hi


def _letters(vector: np.ndarray) -> tuple[str, str]:
    """Patient directions at the negative and positive ends of an axis along ``vector`` (RAS)."""
    names = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS: +x is the patient's right, +y anterior, +z superior
    axis = int(np.argmax(np.abs(vector)))
    neg, pos = names[axis]
    return (neg, pos) if vector[axis] > 0 else (pos, neg)


def _verdict(answer: dict) -> str:
    if not answer:
        return ""
    if answer.get("error"):
        return "refused"
    present = answer.get("aaa_present")
    p = answer.get("aaa_probability")
    text = "" if present is None else ("AAA present" if present else "no AAA")
    if isinstance(p, int | float) and math.isfinite(p):
        text += f" (probability {p:.2f})"
    return text.strip()


def _spacing_origin(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(affine, dtype=np.float64)
    return np.diag(a[:3, :3]).copy(), a[:3, 3].copy()


def _section_png(
    path: Path,
    name: str,
    image: np.ndarray,
    affine: np.ndarray,
    field: np.ndarray,
    m: Measurement,
    answer: dict,
    window: tuple[float, float],
    level: float,
) -> None:
    plt = _pyplot()
    s = m.max_section
    assert s is not None and m.max_diameter_mm is not None
    half = float(np.clip(0.5 * m.max_diameter_mm + 25.0, 50.0, 100.0))
    t, img = sample_plane(image, affine, s.centre_mm, s.normal, half)
    _, pv = sample_plane(field, affine, s.centre_mm, s.normal, half, cval=0.0)
    e1, e2 = plane_basis(s.normal)
    cmap, lo, hi = _grey(window)
    fig, ax = plt.subplots(figsize=(6.4, 6.9), dpi=110)
    step = t[1] - t[0]
    extent = (t[0] - step / 2, t[-1] + step / 2, t[0] - step / 2, t[-1] + step / 2)
    ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi, origin="lower", extent=extent,
              interpolation="bilinear")  # fmt: skip
    measured = measured_outline(pv, float(t[1] - t[0]), level)
    left_out = int((pv >= level).sum() - (measured >= level).sum())
    if left_out * (t[1] - t[0]) ** 2 >= 4.0:  # segmented, not measured: on a narrow neck, or apart in this plane
        ax.contour(t, t, pv, levels=[level], colors=[_LEFT_OUT], linewidths=1.0, linestyles="dashed")
        legend = "dashed: segmented, not measured\n(joined by a narrow neck,\nor apart in this plane)"
        ax.text(0.02, 0.98, legend, transform=ax.transAxes, color="white", fontsize=8, ha="left", va="top",
                bbox={"fc": "black", "ec": _LEFT_OUT, "alpha": 0.7})  # fmt: skip
    ax.contour(t, t, measured, levels=[level], colors=[_OUTLINE], linewidths=1.4)
    # the caliper: ends in plane coordinates, a line with ticks across at both ends
    rel = s.ends_mm - s.centre_mm[None, :]
    uv = np.stack([rel @ e1, rel @ e2], axis=1)
    ax.plot(uv[:, 0], uv[:, 1], color=_CALIPER, linewidth=1.8, solid_capstyle="butt")
    direction = uv[1] - uv[0]
    across = np.array([-direction[1], direction[0]]) / max(float(np.linalg.norm(direction)), 1e-9)
    tick = 0.035 * (2 * half) * across
    for end in uv:
        ax.plot([end[0] - tick[0], end[0] + tick[0]], [end[1] - tick[1], end[1] + tick[1]], color=_CALIPER,
                linewidth=1.8)  # fmt: skip
    ax.plot([0.0], [0.0], marker="+", color=_CENTRELINE, markersize=9, markeredgewidth=1.5)
    # the value just outside the outline, across the caliper's middle (the other side if that leaves the view)
    mid = uv.mean(axis=0)
    vv, uu = np.nonzero(measured >= level)
    inside = np.stack([t[uu], t[vv]], axis=1) - mid[None, :]
    label_at = mid
    for side in (1.0, -1.0):
        reach = float(np.max(inside @ (side * across))) if len(inside) else 0.5 * m.max_diameter_mm
        label_at = mid + side * across * (reach + 0.07 * 2 * half)
        if np.all(np.abs(label_at) < 0.85 * half):
            break
    label_at = np.clip(label_at, -0.85 * half, 0.85 * half)
    ax.text(label_at[0], label_at[1], f"{m.max_diameter_mm:.1f} mm", color="white", fontsize=13, weight="bold",
            ha="center", va="center", bbox={"boxstyle": "round,pad=0.25", "fc": "black", "ec": _CALIPER, "alpha": 0.75})  # fmt: skip
    across_letters = _letters(e1)
    radiological = across_letters[1] == "R"  # e1 points to the patient's right: show it on the viewer's left
    ax.set_xlim(*((extent[1], extent[0]) if radiological else (extent[0], extent[1])))
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    for (lo_l, hi_l), x, y, ha, va in (
        (
            across_letters[::-1] if radiological else across_letters,
            (0.02, 0.98),
            (0.5, 0.5),
            ("left", "right"),
            ("center", "center"),
        ),
        (_letters(e2), (0.5, 0.5), (0.02, 0.98), ("center", "center"), ("bottom", "top")),
    ):
        for letter, xx, yy, h, v in ((lo_l, x[0], y[0], ha[0], va[0]), (hi_l, x[1], y[1], ha[1], va[1])):
            ax.text(xx, yy, letter, transform=ax.transAxes, color="yellow", fontsize=12, weight="bold", ha=h, va=v)
    tilt = math.degrees(math.acos(min(1.0, abs(float(s.normal[2])))))
    ax.set_xlabel("mm (in the cut's plane)")
    ax.set_ylabel("mm")
    verdict = _verdict(answer)
    ax.set_title(
        f"{printable(name, TITLE_LIMIT)}\nmaximum {m.max_diameter_mm:.1f} mm outer to outer"
        f"{' - ' + verdict if verdict else ''}\ncut perpendicular to the centreline at z = {s.centre_mm[2]:.0f} mm, "
        f"{tilt:.0f}° from axial",
        fontsize=9.5,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _overview_png(
    path: Path,
    name: str,
    image: np.ndarray,
    affine: np.ndarray,
    m: Measurement,
    answer: dict,
    window: tuple[float, float],
) -> None:
    plt = _pyplot()
    spacing, origin = _spacing_origin(affine)
    shape = np.array(image.shape)
    axes_mm = [origin[a] + np.arange(shape[a]) * spacing[a] for a in range(3)]
    if m.max_section is not None:
        focus = m.max_section.centre_mm
    elif len(m.centreline_mm):
        focus = m.centreline_mm[len(m.centreline_mm) // 2]
    else:
        focus = origin + (shape - 1) / 2 * spacing
    idx = np.clip(np.rint((focus - origin) / spacing).astype(int), 0, shape - 1)
    cmap, lo, hi = _grey(window)
    span = (shape - 1) * spacing + spacing  # mm covered along x, y, z
    panel_h = 6.4  # inches; each panel as wide as its physical aspect asks, within reason
    widths = [float(np.clip(panel_h * span[h] / span[2], 2.5, 7.0)) for h in (0, 1)]
    fig, axs = plt.subplots(
        1,
        2,
        figsize=(sum(widths) + 2.0, panel_h + 1.4),
        dpi=100,
        gridspec_kw={"width_ratios": widths},
        layout="constrained",
    )
    for ax, axis, title in ((axs[0], 1, "coronal"), (axs[1], 0, "sagittal")):
        horiz = 0 if axis == 1 else 1  # the in-plane horizontal axis: x (coronal), y (sagittal)
        slab = max(1, int(round(5.0 / spacing[axis])))  # a 10 mm slab mean through the focus
        a, b = max(0, idx[axis] - slab), min(shape[axis], idx[axis] + slab + 1)
        view = np.take(np.asarray(image, dtype=np.float32), np.arange(a, b), axis=axis).mean(axis=axis).T  # (z, h)
        hx, zz = axes_mm[horiz], axes_mm[2]
        ext = (hx[0] - spacing[horiz] / 2, hx[-1] + spacing[horiz] / 2, zz[0] - spacing[2] / 2, zz[-1] + spacing[2] / 2)
        ax.imshow(view, cmap=cmap, vmin=lo, vmax=hi, origin="lower", extent=ext, interpolation="bilinear")
        if m.mask.any():
            silhouette = m.mask.any(axis=axis).T.astype(np.float32)  # the whole component, projected
            ax.contour(hx, zz, silhouette, levels=[0.5], colors=[_OUTLINE], linewidths=1.0)
            if not m.measurable:  # found but refused: say what the outline is, and that it was not measured
                ax.text(0.5, 0.02, "outline: the region found - not measured", transform=ax.transAxes,
                        color=_OUTLINE, fontsize=9, weight="bold", ha="center", va="bottom",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "black", "ec": "none", "alpha": 0.6})  # fmt: skip
        if len(m.centreline_mm):
            ax.plot(m.centreline_mm[:, horiz], m.centreline_mm[:, 2], color=_CENTRELINE, linewidth=1.2)
        if m.max_section is not None and m.max_diameter_mm is not None:
            z = float(m.max_section.centre_mm[2])
            ax.axhline(z, color=_CALIPER, linewidth=1.0, linestyle="--")
            ends = m.max_section.ends_mm
            ax.plot(ends[:, horiz], ends[:, 2], color=_CALIPER, linewidth=2.0)
            ax.text(0.03, z + 0.012 * (ext[3] - ext[2]), f"max {m.max_diameter_mm:.1f} mm (z = {z:.0f} mm)",
                    transform=ax.get_yaxis_transform(), color=_CALIPER, fontsize=10, weight="bold", va="bottom",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "black", "ec": "none", "alpha": 0.6})  # fmt: skip
        ax.set_aspect("equal")  # extents in mm: the physical aspect ratio, whatever the spacing
        if horiz == 1:
            ax.set_xlim(ext[1], ext[0])  # sagittal: anterior on the viewer's left
            left, right = "A", "P"
        else:
            ax.set_xlim(ext[1], ext[0])  # coronal, radiological: the patient's right (+x) on the viewer's left
            left, right = "R", "L"
        ax.set_ylim(ext[2], ext[3])
        for letter, x, ha in ((left, 0.02, "left"), (right, 0.98, "right")):
            ax.text(x, 0.98, letter, transform=ax.transAxes, color="yellow", fontsize=12, weight="bold", ha=ha,
                    va="top")  # fmt: skip
        where = f"{'y' if axis == 1 else 'x'} = {int(round(float(focus[axis])))} mm"
        ax.set_title(f"{title} (10 mm slab at {where})", fontsize=10)
        ax.set_xlabel(f"{'x' if horiz == 0 else 'y'} (mm)")
        ax.set_ylabel("z (mm, head up)")
    verdict = _verdict(answer)
    if m.measurable and m.max_diameter_mm is not None:
        head = f"maximum diameter {m.max_diameter_mm:.1f} mm (outer to outer, perpendicular to the centreline)"
    else:
        head = textwrap.fill(f"not measurable: {printable(m.reason, 200)}", 100, break_on_hyphens=False)
    fig.suptitle(f"{printable(name, TITLE_LIMIT)}{' - ' + verdict if verdict else ''}\n{head}", fontsize=11)
    fig.savefig(path)
    plt.close(fig)


def write_study_report(
    out_dir: Path,
    name: str,
    image: np.ndarray,
    affine: np.ndarray,
    prob: np.ndarray,
    m: Measurement,
    answer: dict,
    *,
    window: tuple[float, float] = (0.0, 1.0),
    level: float = 0.5,
) -> dict[str, str]:
    """Write ``<stem>-section.png`` (when ``m`` is measurable) and ``<stem>-overview.png`` into ``out_dir``.

    ``image`` is the CT on ``prob``'s grid, shown through ``window`` (low, high; e.g. (-160, 240) for HU);
    ``level`` must be the one ``m`` was measured at. ``stem`` is :func:`safe_stem` of ``name`` (the name
    itself appears, printable and capped, in the titles). A study that is not measurable gets the
    overview only, titled with the reason (what was found, if anything, is outlined). Returns
    ``{"section": file name or "", "overview": file name}``, relative to ``out_dir``.
    """
    image = np.asarray(image)
    prob = np.asarray(prob)
    if image.shape != prob.shape or image.ndim != 3 or m.mask.shape != prob.shape:
        raise ValueError(f"image {image.shape}, prob {prob.shape} and mask {m.mask.shape} must share one 3D grid")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(name)
    answer = answer or {}
    files = {"section": "", "overview": f"{stem}-overview.png"}
    if m.measurable and m.max_section is not None:
        files["section"] = f"{stem}-section.png"
        field = component_field(prob, m.mask, level)
        _section_png(out_dir / files["section"], name, image, affine, field, m, answer, window, level)
    _overview_png(out_dir / files["overview"], name, image, affine, m, answer, window)
    return files


def _number(value: object, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, fmt)
    return ""


def _answer_cells(entry: dict) -> tuple[str, str, str, str, list[str]]:
    """Verdict, probability, diameter, category and warnings of one entry, as plain (unescaped) text."""
    answer: dict = entry.get("answer") or {}
    m: Measurement | None = entry.get("measurement")
    warnings = [printable(w, 200) for w in answer.get("warnings") or ()]
    if answer.get("error"):
        return f"refused: {printable(answer['error'], 300)}", "", "", "", warnings
    present = answer.get("aaa_present")
    verdict = "" if present is None else ("AAA present" if present else "no AAA")
    probability = _number(answer.get("aaa_probability"), ".2f")
    if m is not None:
        warnings += [printable(w, 200) for w in m.warnings]
        if not m.measurable or m.max_diameter_mm is None:
            return verdict, probability, f"not measurable: {printable(m.reason, 200)}", "", warnings
        diameter = m.max_diameter_mm
    else:
        diameter = answer.get("max_diameter_mm")
    text = _number(diameter, ".1f")
    if not text:
        return verdict, probability, "", printable(answer.get("category", ""), 80), warnings
    category, follow_up = diameter_category(float(diameter))
    return verdict, probability, f"{text} mm", f"{category}: {follow_up}", warnings


def write_index(out_dir: Path, entries: list[dict]) -> Path:
    """Write ``out_dir/index.html``: one row per entry, in the given order.

    Each entry is a dict: ``name`` (the input's name, as given), ``answer`` (the study's answer dict:
    ``aaa_present``, ``aaa_probability``, ``max_diameter_mm``, ``category``, ``warnings``, or ``error``),
    ``files`` (what :func:`write_study_report` returned) and optionally ``measurement`` (its
    :class:`~fedaaa.common.measure.Measurement`, whose diameter, reason and warnings then take precedence).
    Every text is escaped; the page needs nothing but the PNGs beside it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in entries:
        name = printable(entry.get("name", ""), 240, collapse=False)
        verdict, probability, diameter, category, warnings = _answer_cells(entry)
        thumbs = []
        for key in ("section", "overview"):
            file = (entry.get("files") or {}).get(key) or ""
            if file:
                href = html.escape(quote(str(file)), quote=True)
                alt = html.escape(f"{key} of {name}", quote=True)
                thumbs.append(f'<a href="{href}"><img src="{href}" alt="{alt}" class="{key}"></a>')
        warning_html = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        rows.append(
            "<tr>"
            f'<td class="name">{html.escape(name)}</td>'
            f"<td>{html.escape(verdict)}</td>"
            f"<td>{html.escape(probability)}</td>"
            f"<td>{html.escape(diameter)}</td>"
            f"<td>{html.escape(category)}</td>"
            f"<td>{'<ul>' + warning_html + '</ul>' if warning_html else ''}</td>"
            f'<td class="thumbs">{"".join(thumbs)}</td>'
            "</tr>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>FedAAA measurements</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #111; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }}
th {{ background: #eee; }}
td.name {{ font-family: monospace; word-break: break-all; max-width: 22em; }}
td.thumbs img {{ height: 160px; margin-right: 0.4em; border: 1px solid #999; }}
ul {{ margin: 0; padding-left: 1.1em; }}
p.disclaimer {{ font-weight: bold; }}
</style>
</head>
<body>
<h1>FedAAA measurements</h1>
<p class="disclaimer">{html.escape(DISCLAIMER)}</p>
<p>Diameters are maximum outer-wall-to-outer-wall calipers in planes perpendicular to the aortic centreline.</p>
<table>
<tr><th>input</th><th>answer</th><th>probability</th><th>maximum diameter</th><th>category</th><th>warnings</th>
<th>pictures</th></tr>
{chr(10).join(rows)}
</table>
</body>
</html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
