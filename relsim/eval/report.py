"""The outputs of an evaluation, rendered from its ``results.json`` dict: a markdown table, a PNG bar chart with
confidence intervals, and a self-contained HTML page (thumbnails in a folder beside it) that shows each query
with every method's top matches and the judge's scores side by side.

Example:
    >>> results = json.loads(Path("out/results.json").read_text())   # doctest: +SKIP
    >>> print(markdown_table(results))                                # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "write_chart", "write_html", "write_markdown"]

_THUMB = 160
_MATCHES_SHOWN = 5
#: Characters of the judge's answers shown on the page (a 7 MB answer made a 21 MB page); results.json has all.
_ANSWER_SHOWN = 2000


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per method: mean judge score, 95% CI, paired wins vs the reference, counts.

    Without a judge (``--no-judge``) the table lists the methods and how many queries each answered.
    """
    reference = results.get("reference")
    lines = []
    if results.get("label"):
        lines += [f"*{results['label']}*", ""]
    judge = results.get("judge")
    if judge is None:
        lines += ["| method | queries with a match |", "|---|---:|"]
        lines += [f"| {s['method']} | {s['queries']} |" for s in results["summary"]]
        return "\n".join(lines) + "\n"
    versus = f"wins vs {reference} (win/tie/loss)" if reference else "wins vs reference"
    lines += [
        f"| method | mean judge score (0-10) | 95% CI | {versus} | judged | unparseable | failed |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in results["summary"]:
        vs = s.get("vs_reference")
        if s["method"] == reference or not vs or not vs["queries"]:
            wins = "–"
        else:
            wins = f"{vs['win_share']:.0%} ({vs['wins']}/{vs['ties']}/{vs['losses']})"
        row = [s["method"], _fmt(s["mean"]), _ci(s["ci95"]), wins, f"{s['judged']}/{s['queries']}"]
        lines.append("| " + " | ".join(row + [str(s["unparseable"]), str(s["failed"])]) + " |")
    lines += [
        "",
        f"Judge: `{judge['model']}` at temperature {judge['temperature']:g}, "
        f"{judge['samples_per_pair']} sample(s) per pair, prompt sha256 `{judge['prompt_sha256'][:12]}`; "
        f"{results['queries']['used']} queries (seed {results['queries']['seed']}) from a pool of "
        f"{results['pool']['images']} images.",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(markdown_table(results), encoding="utf-8")
    return path


def write_chart(results: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """A bar per method (mean judge score) with its 95% CI; None when nothing was judged."""
    if results.get("judge") is None:
        return None
    rows = [s for s in results["summary"] if s["mean"] is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [s["method"] for s in rows]
    means = [s["mean"] for s in rows]
    low = [s["mean"] - s["ci95"][0] for s in rows]
    high = [s["ci95"][1] - s["mean"] for s in rows]
    colors = ["#d62728" if name == results.get("reference") else "#7f7f7f" for name in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2.5, 3.8), dpi=120)
    ax.bar(names, means, yerr=[low, high], capsize=6, color=colors, edgecolor="black", linewidth=0.6)
    for i, s in enumerate(rows):
        ax.text(i, 0.15, f"n={s['judged']}", ha="center", va="bottom", fontsize=8, color="white")
    ax.set_ylim(0, 10)
    ax.set_ylabel("judge score of the top-1 match")
    title = f"Relational retrieval judged by {results['judge']['model']} (mean, 95% CI)"
    if results.get("label"):
        title += "\n" + textwrap.fill(results["label"], width=int(12 * fig.get_size_inches()[0]))
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _thumbnail(source: str, sha256: str, folder: Path) -> str | None:
    """A JPEG thumbnail in ``folder`` (made once per content); its name, or None if the image is unreadable."""
    from ..preprocess import ImageInputError, decode

    name = f"{sha256[:20]}.jpg"
    target = folder / name
    if not target.is_file():
        try:
            image = decode(source, 0)
        except (ImageInputError, OSError):
            return None
        image.thumbnail((_THUMB, _THUMB))
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        image.convert("RGB").save(tmp, format="JPEG", quality=85)
        os.replace(tmp, target)
    return name


def _score_class(score: float | None) -> str:
    if score is None:
        return "none"
    return "high" if score >= 7 else "mid" if score >= 4 else "low"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.summary{border-collapse:collapse;margin-bottom:1.5em}
table.summary td,table.summary th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
table.summary td:first-child,table.summary th:first-child{text-align:left}
.query{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ddd;padding:.8em 0}
.cell{width:170px;font-size:12px}
.cell img{max-width:160px;max-height:160px;display:block;border:1px solid #ccc}
.more img{max-width:48px;max-height:48px;display:inline-block;margin:2px 2px 0 0}
.score{font-weight:bold;font-size:14px;padding:1px 6px;border-radius:3px;color:white}
.high{background:#2ca02c}.mid{background:#ff7f0e}.low{background:#d62728}.none{background:#999}
.path{color:#666;word-break:break-all}
"""


def write_html(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """The page: summary table, then one row per query: the query, then each method's top-1 (with the
    judge's score and answer) and its next matches. Thumbnails go to ``thumbs/`` beside the page."""
    path = Path(path)
    folder = path.parent / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    methods = [s["method"] for s in results["summary"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>relsim eval retrieval</title>",
        f"<style>{_STYLE}</style></head><body><h1>Relational retrieval</h1>",
    ]
    if results.get("label"):
        parts.append(f"<p><em>{esc(results['label'])}</em></p>")
    parts.append(_summary_html(results))

    def image(entry: dict[str, Any]) -> str:
        name = _thumbnail(entry["path"], entry["sha256"], folder)
        alt = esc(entry.get("label") or os.path.basename(entry["path"]))
        if name is None:
            return f"<div class='path'>{alt} (unreadable)</div>"
        return f"<img src='thumbs/{esc(name)}' alt='{alt}' title='{esc(entry['path'])}' loading='lazy'>"

    for item in results["per_query"]:
        query = item["query"]
        cells = [f"<div class='cell'><b>query</b>{image(query)}<div class='path'>{esc(query['label'])}</div></div>"]
        for name in methods:
            entry = item["methods"].get(name)
            if entry is None or not entry["matches"]:
                cells.append(f"<div class='cell'><b>{esc(name)}</b><div class='path'>no match</div></div>")
                continue
            top = entry["matches"][0]
            judged = entry.get("judge")
            score = ""
            if judged is not None:
                value = judged["score"]
                label = "failed" if judged["errors"] and value is None and not judged["answers"] else _fmt(value, 1)
                answer = _clipped("; ".join(judged["answers"] + judged["errors"]), _ANSWER_SHOWN)
                score = f" <span class='score {_score_class(value)}' title='{esc(answer)}'>{esc(label)}</span>"
            more = "".join(image(m) for m in entry["matches"][1:_MATCHES_SHOWN])
            cells.append(
                f"<div class='cell'><b>{esc(name)}</b>{score}{image(top)}"
                f"<div class='path'>{esc(top['label'])} · cos {top['cosine']:.3f}</div>"
                + (f"<div class='more'>{more}</div>" if more else "")
                + "</div>"
            )
        parts.append("<div class='query'>" + "".join(cells) + "</div>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _clipped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters in results.json)"


def _summary_html(results: dict[str, Any]) -> str:
    esc = html.escape
    judge = results.get("judge")
    head = "<tr><th>method</th><th>queries</th>"
    if judge is not None:
        head += "<th>mean score</th><th>95% CI</th><th>wins vs " + esc(str(results.get("reference"))) + "</th>"
        head += "<th>judged</th><th>unparseable</th><th>failed</th>"
    rows = [head + "</tr>"]
    for s in results["summary"]:
        row = f"<tr><td>{esc(s['method'])}</td><td>{s['queries']}</td>"
        if judge is not None:
            vs = s.get("vs_reference")
            wins = (
                "–"
                if not vs or not vs["queries"] or s["method"] == results.get("reference")
                else (f"{vs['win_share']:.0%}")
            )
            row += f"<td>{_fmt(s['mean'])}</td><td>{_ci(s['ci95'])}</td><td>{wins}</td>"
            row += f"<td>{s['judged']}</td><td>{s['unparseable']}</td><td>{s['failed']}</td>"
        rows.append(row + "</tr>")
    text = "<table class='summary'>" + "".join(rows) + "</table>"
    if judge is not None:
        text += f"<p>Judge <code>{esc(judge['model'])}</code>, temperature {judge['temperature']:g}; hover a score "
        text += "for the judge's answer.</p>"
    return text
