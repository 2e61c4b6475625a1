"""The results document printed as a Markdown table, or drawn as a PNG (matplotlib).

Both read only the document (``--load`` prints a saved ``--json`` file) and the
workload registry, for each row's unit, direction and kind. No state; any thread.
"""

from __future__ import annotations

from typing import Any

from pyexec.bench.workloads import WORKLOADS

SHORT = {"multiprocessing.Pool": "mp.Pool", "concurrent.futures": "concurrent.futures"}


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(s: float) -> str:
    return f"{s:.2f}x" if s >= 0.1 else f"{s:.3f}x"  # 0.002x, not 0.00x


def _n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def table(doc: dict) -> str:
    """The results as a Markdown table: medians and speed-ups over concurrent.futures."""
    meta, results = doc["meta"], doc["results"]
    pools = meta["pools"]
    head = ["workload", "unit", *[SHORT.get(p, p) for p in pools]]
    rows = []
    notes = []
    for workload, per_pool in results.items():
        wl = WORKLOADS[workload]
        unit, higher = wl.unit, wl.higher_is_better
        label = workload
        if wl.kind == "pool":
            label = f"{workload} ({_n(meta_count(per_pool))})"
        elif wl.value == "peak_rss_mib":
            label = f"{workload} ({_n(meta_count_max(per_pool))} pending)"
        cells = []
        for p in pools:
            res = per_pool[p]
            if res.get("na"):
                cells.append("n/a")
                notes.append(f"n/a: {workload} / {p}: {res['na']}.")
                continue
            if res["median"] is None:
                cells.append("failed")
                continue
            cell = _num(res["median"])
            if res.get("speedup") is not None:
                cell += f" ({_ratio(res['speedup'])})"
            if wl.kind == "process":
                cell += f" [{_n(res['n'])}]" if res["n"] != meta_count_max(per_pool) else ""
            cells.append(cell)
        arrow = "↑" if higher else "↓"
        if wl.detail:
            what, of_count = wl.detail
            label += f", {what} {_n(of_count(meta_count(per_pool)))}"
        if wl.baseline:
            label += f" [x vs {SHORT.get(wl.baseline, wl.baseline)}]"
        rows.append([label, f"{unit} {arrow}", *cells])
        if wl.kind == "process":
            rows.extend(_process_rows(workload, per_pool, pools, notes))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    _notes(doc, notes)
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _process_rows(workload: str, per_pool: dict, pools: list[str], notes: list[str]) -> list:
    """A "process" workload's extra rows: its seconds, and its parent's peak RSS."""
    wl = WORKLOADS[workload]
    rows = []
    secs = []
    rss = []
    for p in pools:
        res = per_pool[p]
        if res.get("na") or res["median"] is None:
            secs.append("n/a" if res.get("na") else "failed")
            rss.append(secs[-1])
            continue
        mark = " [reduced]" if res["n"] != meta_count_max(per_pool) else ""
        secs.append(f"{_num(res['seconds'])}{mark}")
        rss.append(f"{res['peak_rss_mib']:.0f}{mark}")
    big = _n(meta_count_max(per_pool))
    rows.append([f"{workload} ({big}), time", "s ↓", *secs])
    if wl.value != "peak_rss_mib":  # else the row above is the peak RSS
        rows.append([f"{workload} ({big}), parent peak RSS", "MiB ↓", *rss])
    reduced = sorted({_n(per_pool[p]["n"]) for p in pools if per_pool[p].get("n")})
    if len(reduced) > 1:
        notes.append(
            f"[reduced]: that pool's {workload} run mapped fewer items (the count in [..]) "
            "to keep the default run short: its items/s compares, its seconds and "
            "peak RSS do not. `--full` runs every pool at the full count."
        )
    return rows


def _notes(doc: dict, notes: list[str]) -> None:
    """The notes under the table: the floor, how it was measured, failures."""
    meta, results = doc["meta"], doc["results"]
    floor = doc.get("floor")
    if floor:
        notes.append(
            f"Raw pipe round trip floor, two processes ({floor['kind']}): "
            f"{floor['median']:.1f} µs (median of {len(floor['runs'])})."
        )
    notes.append(
        f"(Nx) = speed-up over concurrent.futures (or the pool in [x vs ..]), higher is "
        f"better. Medians of "
        f"{meta['repeats']} interleaved runs; {meta['workers']} workers; start method "
        f"{meta['start_method']}; Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpus']} CPUs; load average {meta['loadavg_before'][0]:.2f} before, "
        f"{meta['loadavg_after'][0]:.2f} after; {meta['wall_seconds']:.0f} s in all."
    )
    if meta.get("row_seconds"):
        each = ", ".join(f"{w} {s:.0f} s" for w, s in meta["row_seconds"].items())
        notes.append(f"Wall time per row: {each}.")
    versions = ", ".join(f"{p} {v}" for p, v in meta["versions"].items())
    notes.append(f"Versions: {versions}.")
    errors = [
        f"{w}/{p}: {e}"
        for w, per_pool in results.items()
        for p, res in per_pool.items()
        for e in res["errors"][:1]
    ]
    if errors:
        notes.append("Failures: " + "; ".join(errors))


def meta_count(per_pool: dict) -> int:
    """The item count of a workload of the "pool" kind (the same for every pool)."""
    return next(iter(per_pool.values()))["count"]


def meta_count_max(per_pool: dict) -> int:
    """The largest item count any pool ran in this workload."""
    return max(res.get("n", res["count"]) for res in per_pool.values())


def plot(doc: dict, path: str) -> None:
    """A PNG with one bar chart per workload (needs matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'pyexec[plot]' (or pip install matplotlib)"
        ) from None
    meta, results = doc["meta"], doc["results"]
    pools = meta["pools"]
    panels = _panels(doc)
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, panel in zip(axes.flat, panels, strict=False):
        values, speed, reduced = panel["values"], panel["speedup"], panel["reduced"]
        labels = [
            SHORT.get(p, p).replace("concurrent.futures", "c.f.") + ("*" if p in reduced else "")
            for p in pools
        ]
        heights = [values[p] or 0 for p in pools]
        bars = ax.bar(labels, heights, color=[colors[i % 10] for i in range(len(pools))])
        for bar, p in zip(bars, pools, strict=True):
            s = speed.get(p)
            text = (
                ("n/a" if results[panel["workload"]][p].get("na") else "failed")
                if values[p] is None
                else (f"{s:.2f}x" if s else "")
            )
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if "floor" in panel:
            value, label = panel["floor"]
            ax.axhline(value, color="black", linestyle="--", linewidth=0.8)
            ax.annotate(f"{label}: {value:.1f}", (0.02, value), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=7)  # fmt: skip
        if reduced:
            ax.set_xlabel("* fewer items (not comparable in this panel)"
                          if not panel["speedup"] else "* fewer items", fontsize=7)  # fmt: skip
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"pyexec vs other pools: {meta['workers']} workers, {meta['start_method']}, "
        f"Python {meta['python']} (x = speed-up over concurrent.futures)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panels(doc: dict) -> list[dict[str, Any]]:
    """One panel per workload (two for a "process" one: its parent's peak RSS apart)."""
    meta, results = doc["meta"], doc["results"]
    pools = meta["pools"]
    panels: list[dict[str, Any]] = []
    for workload, per_pool in results.items():
        wl = WORKLOADS[workload]
        unit, higher = wl.unit, wl.higher_is_better
        panel = {
            "workload": workload,
            "title": workload,
            "ylabel": f"{unit} ({'higher' if higher else 'lower'} is better)",
            "values": {p: per_pool[p]["median"] for p in pools},
            "speedup": {p: per_pool[p].get("speedup") for p in pools},
            "reduced": set(),
        }
        panels.append(panel)
        if wl.floor and doc.get("floor"):
            panel["floor"] = (doc["floor"]["median"], f"pipe floor, {doc['floor']['kind']}")
        if wl.kind == "process" and wl.value == "peak_rss_mib":
            panel["title"] = f"{workload}: parent peak RSS"
        elif wl.kind == "process":
            top = meta_count_max(per_pool)
            reduced = {p for p in pools if per_pool[p].get("n", top) != top}
            panel["reduced"] = reduced
            panel["title"] = f"{workload}: map over {_n(top)} items"
            panels.append(
                {
                    "workload": workload,
                    "title": f"{workload}: parent peak RSS",
                    "ylabel": "MiB (lower is better)",
                    "values": {p: per_pool[p].get("peak_rss_mib") for p in pools},
                    "speedup": {},
                    "reduced": reduced,
                }
            )
    return panels
