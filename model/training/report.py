"""An evaluation report folder: every measured row in results.json, rendered as a markdown table
(results.md) and an accuracy-vs-critical-path plot (latency-accuracy.png).

Rows accumulate across `plandiff eval` runs (one per model or mode), so PD, its AR twin and the
diffusion-only baseline land in one table; a row measured again replaces the old one.
"""

from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from pathlib import Path

RESULTS, TABLE, PLOT = "results.json", "results.md", "latency-accuracy.png"


def add_rows(folder: str | Path, rows: list[dict]) -> list[dict]:
    """Merge `rows` (each with `label` and `options`) into the folder's results and re-render it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        path = folder / RESULTS
        old = json.loads(path.read_text()) if path.exists() else []
        keys = {_key(r) for r in rows}
        merged = [r for r in old if _key(r) not in keys] + rows
        path.write_text(json.dumps(merged, indent=1) + "\n")
        (folder / TABLE).write_text(table(merged))
        plot(merged, folder / PLOT)
    return merged


def table(rows: list[dict]) -> str:
    families = sorted({f for r in rows for f in r["by_family"]})
    head = ["model", "split", "options", "accuracy", "95 % interval", *families, "facts right", "spans = entities",
            "valid plans", "critical path", "of which denoising", "s/answer", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        low, high = wilson(r["accuracy"], r["examples"])
        spans = r.get("spans_match")
        cells = [r["label"], r.get("split", "test"), _options(r["options"]), f"{r['accuracy']:.1%}", f"{low:.1%}–{high:.1%}",
                 *(f"{r['by_family'][f]:.0%}" if f in r["by_family"] else "" for f in families),
                 f"{r['facts_right']:.1%}" if "facts_right" in r else "", "" if spans is None else f"{spans:.1%}",
                 f"{r['valid_plans']:.1%}", f"{r['critical_path']:.1f}",
                 f"{r['denoising']:.1f}" if "denoising" in r else "", f"{r['seconds']:.3f}", str(r["examples"])]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({r["device"] for r in rows})
    lines += ["", "critical path: mean sequential forward passes per answer; of which denoising: the diffusion steps "
              f"among them (the rest are the prompt, plan and plain-text tokens). s/answer: wall time on {', '.join(devices)}.",
              "", "split: test draws the training wording and layout families, heldout the families kept out of "
              "training; both from the test value pool (no name, city or job of training). facts right: facts found in "
              "their own entity's part of the answer; spans = entities: planned answers with one span per entity or "
              "question.",
              "", "95 % interval: the Wilson score interval of the accuracy over the row's n examples (sampling "
              "error only: two rows on the same prompts differ by less than their intervals suggest)."]
    return "\n".join(lines) + "\n"


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed over n trials (sound near 0 and 1,
    where p ± z·√(p(1−p)/n) collapses to a point)."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    labels = []  # (x, y, text, colour): each point named by what changes along its line
    for label, split in dict.fromkeys((r["label"], r.get("split", "test")) for r in rows):
        mine = sorted((r for r in rows if r["label"] == label and r.get("split", "test") == split),
                      key=lambda r: r["critical_path"])
        (drawn,) = axes.plot([r["critical_path"] for r in mine], [100 * r["accuracy"] for r in mine],
                             "o-" if split == "test" else "s--", label=f"{label}, {split}")
        varying = [k for k in mine[0]["options"] if len({str(r["options"].get(k)) for r in mine}) > 1]
        labels += [(r["critical_path"], 100 * r["accuracy"],
                    " ".join(f"{_SHORT.get(k, k)}={r['options'].get(k)}" for k in varying), drawn.get_color())
                   for r in (mine if varying else [])]
    largest = {}  # the goal line, half the AR critical path: one per AR model, from its largest sample
    for r in rows:
        if r["mode"] == "autoregressive" and r.get("split", "test") == "test" and \
                r["examples"] >= largest.get(r["model"], {}).get("examples", 0):
            largest[r["model"]] = r
    for r in largest.values():
        axes.axvline(r["critical_path"] / 2, color="grey", linestyle=":", linewidth=1)
        axes.annotate(f"½ {r['label']}", (r["critical_path"] / 2, 0.02), xycoords=("data", "axes fraction"),
                      fontsize=7, color="grey", xytext=(3, 0), textcoords="offset points")
    axes.set_xscale("log")  # baselines can sit several times further out than the rows that matter
    low, high = axes.get_xlim()
    axes.set_xticks([t for t in (5, 10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500, 1000) if low <= t <= high])
    axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _place_labels(figure, axes, labels)
    axes.set_xlabel("critical path (sequential forward passes per answer, log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _place_labels(figure, axes, labels: list[tuple[float, float, str, str]]) -> None:
    """Lines often meet near the same critical path: each label takes the first spot around its
    point that overlaps no marker and no label placed before it, or is left out (results.md has
    every row)."""
    from matplotlib.transforms import Bbox

    renderer = figure.canvas.get_renderer()
    points = axes.transData.transform([(x, y) for x, y, _, _ in labels]) if labels else []
    placed = [Bbox.from_extents(px - 4, py - 4, px + 4, py + 4) for px, py in points]  # the markers
    for x, y, text, colour in labels:
        for dx, dy in _SPOTS:
            note = axes.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color=colour,
                                 ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            note.remove()


_SPOTS = [(4, 3), (4, -3), (-4, 3), (-4, -3), (4, 10), (4, -10), (-4, 10), (-4, -10)]


_SHORT = {"steps_ratio": "ratio", "threshold": "τ"}


def _key(row: dict) -> str:
    return json.dumps([row["label"], row.get("split", "test"), row["options"]], sort_keys=True)


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


@contextmanager
def _locked(folder: Path):
    """Runs evaluating side by side append to one report: serialize the read-merge-write."""
    with open(folder / ".report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
