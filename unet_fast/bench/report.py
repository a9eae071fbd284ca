"""The results, three ways: a text table for the terminal, a JSON file for benchmarks/results/,
and a speedup plot for the README."""
import json

from unet_fast.cases import MODE_LABELS


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def _ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.1f}")


def _shape_line(shapes: dict) -> str:
    return "  ".join(f"{k} {list(v) if isinstance(v, (list, tuple)) else v}" for k, v in shapes.items())


# Said with every CPU run: its numbers show that the harness works, not how fast the product is.
CPU_NOTE = ("CPU figures: the fused op's PyTorch path against eager PyTorch on this CPU; they are not the "
            "product's GPU figures (those come from `unet-fast bench` on a CUDA GPU)")


def header_lines(meta: dict) -> list:
    floor = meta.get("ceiling_gbps")
    floor_text = (f"{floor:.0f} GB/s ({meta.get('ceiling_source', '')})" if floor
                  else "none (no roofline on this device)")
    return [f"device: {meta['device_name']} [{meta['device']}]   torch {meta['torch']}   "
            f"triton {meta['triton']}   commit {meta['commit']}   {meta['date']}",
            f"fused path: {meta.get('fused_path', '?')}   timer: {meta.get('timer', '?')}   "
            f"input sets rotated: {meta.get('n_sets', '?')}"
            + (f"   threads: {meta['threads']} ({meta.get('threads_reason', '')})"
               if meta.get("device") == "cpu" else ""),
            *([CPU_NOTE] if meta.get("device") == "cpu" else []),
            f"bandwidth floor (100%): {floor_text}"
            + (f"   load average {meta['loadavg_start']} at start"
               + (f", {meta['loadavg_end']} at end" if meta.get("loadavg_end") is not None else "")
               + f", {meta['cpu_count']} cores" if meta.get("device") == "cpu" and meta.get("loadavg_start") is not None
               else "")]


COLUMNS = ["dtype", "layout", "mode", "provider", "median ms", "q20-q80 ms", "speedup",
           "MB", "GB/s", "% floor", "peak MB", "rel err", "note"]


def row_cells(r: dict) -> list:
    spread = f"{_ms(r['q20_ms'])}-{_ms(r['q80_ms'])}" if r.get("q20_ms") is not None else "-"
    note = r["note"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
    return [r["dtype"], r["layout"], MODE_LABELS[r["mode"]],
            r["provider"], _ms(r["median_ms"]), spread,
            _fmt(r["speedup_vs_eager"], ".2f") + ("x" if r["speedup_vs_eager"] else ""),
            _fmt(r["bytes"] and r["bytes"] / 1e6, ".1f"), _fmt(r["gbps"], ".1f"),
            _fmt(r["pct_of_floor"], ".1f"), _fmt(r["peak_mb"], ".0f", "n/a"),
            _fmt(r["rel_err"], ".1e"), note]


def format_bench_table(rows, meta) -> str:
    """Plain-text table grouped by case, each group headed by its shapes."""
    lines = header_lines(meta)
    for label in dict.fromkeys(r["case_label"] for r in rows):
        group = [r for r in rows if r["case_label"] == label]
        cells = [COLUMNS] + [row_cells(r) for r in group]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
        lines += ["", f"{label}   {_shape_line(group[0]['shapes'])}"]
        for c in cells:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)) + "  " + c[-1])
    return "\n".join(lines)


def write_json(path, rows, meta) -> None:
    """{'meta': ..., 'rows': [...]}; each row repeats the device, versions, commit and date so a
    row read alone (or concatenated with other runs) still says where it came from."""
    keep = ("device", "device_name", "torch", "triton", "commit", "date")
    doc = {"meta": meta, "rows": [dict({k: meta[k] for k in keep}, **r) for r in rows]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def plot_speedups(path, rows, meta) -> None:
    """One panel per case: bars of speedup over eager per configuration and provider."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["speedup_vs_eager"] and r["provider"] != "eager"]
    labels = list(dict.fromkeys(r["case_label"] for r in rows))
    config = lambda r: f"{r['dtype']}\n{r['layout']}\n{MODE_LABELS[r['mode']]}"  # noqa: E731
    fig, axes = plt.subplots(len(labels), 1, figsize=(10, 3.2 * len(labels) + 0.6), squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        group = [r for r in ok if r["case_label"] == label]
        configs = list(dict.fromkeys(config(r) for r in group))
        providers = list(dict.fromkeys(r["provider"] for r in group))
        width = 0.8 / max(1, len(providers))
        for k, provider in enumerate(providers):
            mine = [r for r in group if r["provider"] == provider]
            xs = [configs.index(config(r)) + (k - (len(providers) - 1) / 2) * width for r in mine]
            bars = ax.bar(xs, [r["speedup_vs_eager"] for r in mine], width, label=provider)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(configs, fontsize=8)
        ax.set_ylabel("speedup vs eager")
        ax.set_title(f"{label}  {_shape_line(next(r['shapes'] for r in rows if r['case_label'] == label))}",
                     fontsize=9)
        if providers:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no measured rows", ha="center", transform=ax.transAxes)
    fig.suptitle(f"unet_fast on {meta['device_name']}, torch {meta['torch']}, triton {meta['triton']}, "
                 f"commit {meta['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
