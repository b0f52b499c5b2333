"""One figure per video (affect tracks, contributions, probability, segments) and a
self-contained HTML report.

Figures use matplotlib's Agg backend (no display needed). The report embeds every image
as base64 and renders the results Markdown (headings, tables, bullets, paragraphs) to
HTML itself, so it opens offline and references nothing outside the file.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from ahjax.core.data.store import FeatureStore  # noqa: E402
from level1_affect.schema import FACE_DESC, TEXT_AFFECT, VOICE_PROSODY  # noqa: E402
from level2_conflict import features as feats  # noqa: E402
from level2_conflict.multirun import named_share  # noqa: E402

_SEGMENT_COLOURS = {1: "#d62728", 0: "#c7e9c0", -1: "#bdbdbd"}


def _column(tracks: Mapping, name: str, columns: Sequence[str], col: str, n: int):
    if name not in tracks:
        return None
    arr = np.asarray(tracks[name], np.float32).reshape(n, -1)
    return arr[:, columns.index(col)]


def _shade(ax, t: np.ndarray, where: np.ndarray, colour: str, label: str) -> None:
    """Shade the x ranges where ``where`` holds, across the whole height of ``ax``."""
    if np.any(where):
        ax.fill_between(t, 0, 1, where=where, color=colour, alpha=0.25, step="mid",
                        transform=ax.get_xaxis_transform(), linewidth=0, label=label)


def _segments(ax, t: np.ndarray, labels: np.ndarray, y: float, dt: float) -> None:
    """Draw runs of ``labels`` as horizontal bars at height ``y``."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return
    change = np.flatnonzero(np.diff(labels)) + 1
    for a, b in zip(np.concatenate([[0], change]), np.concatenate([change, [labels.size]])):
        value = int(labels[a])
        ax.broken_barh([(t[a], (b - a) * dt)], (y - 0.35, 0.7),
                       facecolors=_SEGMENT_COLOURS.get(value, "#bdbdbd"))


def plot_video(tracks: Mapping[str, np.ndarray], contributions: Mapping[str, np.ndarray],
               prob: np.ndarray, true_labels: np.ndarray, decoded: np.ndarray, fps: float,
               title: str, path: str | Path, shares: Mapping[str, float] | None = None,
               times: np.ndarray | None = None) -> Path:
    """Draw one video's evidence and predictions into a PNG at ``path``; returns the path.
    ``tracks``: level-1 arrays ``(n, d)`` (a missing one leaves its panel empty);
    ``contributions``: name -> ``(n,)`` (heatmap, red towards A/H); ``true_labels`` and
    ``decoded`` in {1, 0, -1 unlabelled}; ``shares``: each row's share of the total
    (default :func:`contribution_shares`); ``times``: frame times (default ``i / fps``)."""
    prob = np.asarray(prob, np.float32).reshape(-1)
    n = prob.size
    dt = 1.0 / float(fps)
    t = np.arange(n) * dt if times is None else np.asarray(times, np.float64).reshape(-1)
    end = float(t[-1]) + dt if n else dt
    names = list(contributions)
    ratios = [1.2, 1.2, 1.2, max(1.0, 0.28 * len(names)), 0.9, 0.6]
    fig, axes = plt.subplots(6, 1, figsize=(13, 11), sharex=True,
                             gridspec_kw={"height_ratios": ratios})
    ax_face, ax_voice, ax_text, ax_contrib, ax_prob, ax_seg = axes

    # Face: valence and arousal as level 1 gave them, and the valence level 2 reads;
    # grey where no face was found.
    valence = _column(tracks, "face_desc", FACE_DESC, "valence", n)
    arousal = _column(tracks, "face_desc", FACE_DESC, "arousal", n)
    if valence is None and "face_expr" in tracks:
        # No descriptors: fall back to the expression-probability circumplex mapping.
        expr = {"face_expr": np.asarray(tracks["face_expr"])}
        face = np.asarray(feats.affect_tracks(expr, face_baseline="raw")["face"])
        valence, arousal = face[:, 0], face[:, 1]
    if valence is not None:
        ax_face.plot(t, valence, color="#1f77b4", lw=1, alpha=0.45, label="valence (level 1)")
        ax_face.plot(t, arousal, color="#ff7f0e", lw=1, label="arousal")
        # What level 2 reads: valence against the person's own baseline.
        face_keys = [k for k in ("face_present", "face_desc", "face_expr") if k in tracks]
        relative = np.asarray(feats.affect_tracks(
            {k: np.asarray(tracks[k], np.float32).reshape(n, -1) for k in face_keys})["face"])
        ax_face.plot(t, relative[:, 0], color="#08306b", lw=1.2,
                     label="valence vs own baseline (level 2)")
    present = _column(tracks, "face_present", ("face_present",), "face_present", n)
    if present is not None:
        _shade(ax_face, t, present < 0.5, "grey", "no face")
    ax_face.axhline(0, color="k", lw=0.5)
    ax_face.set_ylabel("face")

    pitch = _column(tracks, "voice_prosody", VOICE_PROSODY, "pitch_z", n)
    if pitch is not None:
        energy = _column(tracks, "voice_prosody", VOICE_PROSODY, "energy", n)
        energy_z = (energy - energy.mean()) / (energy.std() + 1e-6)
        ax_voice.plot(t, pitch, color="#2ca02c", lw=1, label="pitch z")
        ax_voice.plot(t, energy_z, color="#9467bd", lw=1, label="energy z")
        active = _column(tracks, "voice_prosody", VOICE_PROSODY, "voice_active", n)
        _shade(ax_voice, t, active > 0.5, "#2ca02c", "voice active")
    ax_voice.set_ylabel("voice")

    sentiment = _column(tracks, "text_affect", TEXT_AFFECT, "sentiment", n)
    if sentiment is not None:
        ax_text.plot(t, sentiment, color="k", lw=1, label="sentiment")
        ax_text.fill_between(t, 0, _column(tracks, "text_affect", TEXT_AFFECT, "change_talk", n),
                             step="mid", color="#2ca02c", alpha=0.4, label="change talk")
        ax_text.fill_between(t, 0, -_column(tracks, "text_affect", TEXT_AFFECT, "sustain_talk", n),
                             step="mid", color="#d62728", alpha=0.4, label="sustain talk (-)")
    ax_text.set_ylabel("text")
    for ax in (ax_face, ax_voice, ax_text):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7, ncol=4)

    if names:
        grid = np.stack([np.asarray(contributions[k], np.float32).reshape(-1) for k in names])
        vmax = float(np.max(np.abs(grid))) or 1.0
        im = ax_contrib.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                               interpolation="nearest",
                               extent=(0, end, len(names) - 0.5, -0.5))
        shares = contribution_shares(contributions) if shares is None else shares
        ax_contrib.set_yticks(range(len(names)),
                              [f"{k} ({100 * shares.get(k, 0.0):.0f}%)" for k in names],
                              fontsize=7)
        cax = ax_contrib.inset_axes([1.005, 0.0, 0.012, 1.0])
        fig.colorbar(im, cax=cax)
    ax_contrib.set_ylabel("contribution")

    ax_prob.plot(t, prob, color="#d62728", lw=1.2)
    ax_prob.axhline(0.5, color="k", lw=0.5, ls="--")
    ax_prob.set_ylim(0, 1)
    ax_prob.set_ylabel("P(A/H)")

    _segments(ax_seg, t, true_labels, 1.0, dt)
    _segments(ax_seg, t, decoded, 0.0, dt)
    ax_seg.set_yticks([0, 1], ["decoded", "true"])
    handles = [matplotlib.patches.Patch(color=c, label=l) for l, c in
               (("A/H", _SEGMENT_COLOURS[1]), ("not A/H", _SEGMENT_COLOURS[0]),
                ("unlabelled", _SEGMENT_COLOURS[-1]))]
    ax_seg.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
                  frameon=False)
    ax_seg.set_ylim(-0.6, 1.6)
    ax_seg.set_xlabel("time (s)")
    ax_seg.set_xlim(0, end)

    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.97, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software metadata: the report must not carry any outside reference.
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def video_figures(store: FeatureStore, video_ids: Sequence[str], outputs: Mapping,
                  decoded: Mapping, fps: Mapping, labels: Mapping, folder: Path) -> list[Path]:
    """One :func:`plot_video` per video of a run's ``outputs`` (``Trained.outputs``), the
    remainder as its own row, into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for vid in video_ids:
        o = outputs[vid]
        tracks = {k: np.asarray(store.read(vid, k)) for k in feats.TRACKS}
        contributions = dict(o["contributions"], remainder=o["remainder"])
        share = named_share({vid: o})
        path = folder / f"{Path(vid).stem[:80].replace(' ', '_')}.png"
        plot_video(tracks, contributions, o["prob"], labels[vid], decoded[vid], fps[vid],
                   f"{Path(vid).name}  (named share of the score {share:.2f})", path)
        paths.append(path)
    return paths


def contribution_shares(contributions: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each row's share of the total: ``mean |c_k| / sum_j mean |c_j|`` (0 when all are 0)."""
    mags = {k: float(np.mean(np.abs(np.asarray(v, np.float64)))) if np.size(v) else 0.0
            for k, v in contributions.items()}
    total = sum(mags.values())
    return {k: (m / total if total > 0 else 0.0) for k, m in mags.items()}


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".svg": "image/svg+xml", ".gif": "image/gif"}


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _breakable(text: str) -> str:
    """``_inline(text)`` with a line-break opportunity after each ``_`` and ``/``."""
    return re.sub(r"([_/])", r"\1<wbr>", _inline(text))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str) -> str:
    """The Markdown subset our results use (headings, pipe tables, bullets, paragraphs); a
    paragraph right under the ``#`` title gets ``class='summary'``."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [r for r in block if not re.fullmatch(r"\|?[\s:|-]+\|?", r.strip())]
            # Wrapped so a wide table scrolls inside the page instead of past its edge;
            # header names may break after an underscore or a slash.
            out.append("<div class='table-wrap'><table>")
            for j, row in enumerate(rows):
                tag = "th" if j == 0 else "td"
                out.append("<tr>" + "".join(
                    f"<{tag}>{_breakable(c) if j == 0 else _inline(c)}</{tag}>"
                    for c in _cells(row)) + "</tr>")
            out.append("</table></div>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            # A paragraph right under the title is the page's summary, set off by style.
            lead = bool(out) and out[-1].startswith("<h1>")
            out.append(f"<p class='summary'>{_inline(line)}</p>" if lead
                       else f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


#: The report's style: the page at most 1300 px wide, tables in a scrolling wrapper, compact
#: cells, and the summary paragraph set off at the top.
REPORT_CSS = (
    "body{font-family:sans-serif;max-width:1300px;margin:auto;padding:0 12px}"
    ".table-wrap{max-width:100%;overflow-x:auto;margin:0 0 1em}"
    "table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "td{white-space:nowrap}th{vertical-align:bottom;min-width:3em}"
    "td:first-child,th:first-child{text-align:left}"
    "p.summary{font-size:17px;line-height:1.45;background:#f4f7fb;padding:10px 14px;"
    "border-left:4px solid #4a78b0}img{max-width:100%}")


def report_html(results_md: str, figures: Sequence[str | Path], path: str | Path,
                title: str = "ahjax report") -> Path:
    """Write one self-contained HTML file: the results, then every figure embedded.

    ``results_md``: Markdown (as ``ahjax.core.results`` writes it); ``figures``: image files
    (PNG, JPEG, SVG, GIF), each embedded as a base64 data URI under its file name.
    Returns the path written.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{REPORT_CSS}</style></head><body>",
             markdown_to_html(results_md)]
    if figures:
        parts.append("<h2>figures</h2>")
    for fig in figures:
        fig = Path(fig)
        mime = _MIME.get(fig.suffix.lower())
        if mime is None:
            raise ValueError(f"report_html: {fig} is not an image type it can embed")
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(fig.name)}' src='data:{mime};base64,"
                     f"{data}'><figcaption>{html.escape(fig.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
