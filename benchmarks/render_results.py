"""Write benchmarks/RESULTS.md from the JSON files in benchmarks/results/ and nothing else.

    python benchmarks/render_results.py            # rewrite RESULTS.md
    python benchmarks/render_results.py --check    # exit 1 if RESULTS.md is out of date

Every measured number in RESULTS.md comes from a JSON file written by `unet-fast bench --json`;
where no file has it, the cell says "not measured". The only other numbers are the roofline
predictions, computed from the byte formula in unet_fast/bench/roofline.py and labelled as such.
Needs only the standard library (and unet_fast for the formula), so it runs anywhere.
"""
import argparse
import glob
import json
import os
import sys

from unet_fast import names
from unet_fast.kernels.time_model import percent_shown

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
OUT = os.path.join(HERE, "RESULTS.md")
NM = "not measured"
# The H100's device-to-device copy ceiling (measured on the H100 SXM), the floor for the predictions below.
H100_COPY_GBPS = 3000.0
STEPS = (("up3", 512, 256, 256, 64), ("up2", 256, 128, 128, 128), ("up1", 128, 64, 64, 256))
MODE = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd"}
ORDER = ("eager", "fused", "compiled", "fused-compiled")
# gpt-fast's waterfall: one row per technique added on top of the previous one. For the decoder
# steps the last row is the fused op itself (a compiled up_concat is the same opaque op); for the
# model it is UNet under torch.compile, i.e. the fused kernel on top of the compiled model.
WATERFALL = (("eager fp32", "eager", "eager", "fp32", "contiguous"),
             ("+ bf16", "eager", "eager", "bf16", "contiguous"),
             ("+ channels_last", "eager", "eager", "bf16", "channels_last"),
             ("+ torch.compile", "compiled", "compiled", "bf16", "channels_last"),
             ("+ fused kernel", "fused", "fused-compiled", "bf16", "channels_last"))


STATIC = "static analysis"
# Runs of code that has changed since: kept for benchmarks/NOTES.md's history, never tabled (every
# figure in RESULTS.md is one of the current code). The file name and why it no longer applies.
SUPERSEDED = {
    "cpu-epyc-1thread-20261125-8002631ff8ab.json":
        "the 2-D steps' PyTorch path before the N-d rewrite of commit 4c05be3",
}


def load():
    """Every results file with rows: `unet-fast bench --json` runs, and `unet-fast kernels --json`
    static reports (meta.kind says so). Other JSON (gpu_run.sh's summary.json) is not a table."""
    docs = []
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        with open(path) as f:
            doc = json.load(f)
        if "rows" not in doc and "networks" not in doc:
            continue
        doc["file"] = os.path.relpath(path, HERE)
        for row in doc.get("rows", []):  # older bench files spell dtypes as torch does ("bfloat16")
            row["dtype"] = names.dtype_name(row["dtype"])
        docs.append(doc)
    return docs


def static_section(doc) -> list:
    """One line per arch, kernel, dtype and layout of a `unet-fast kernels` report: the configs
    the autotuner may launch and the worst of them."""
    meta = doc["meta"]
    arches = " ".join(f"--arch {a}" for a in meta.get("arches", ()))
    md = [f"From `{doc['file']}`: {meta['kind']}. Triton {meta['triton']}, commit {meta['commit']}, "
          f"{meta['date']}; spill bound {meta['max_spill']} bytes; problems: {len(meta['problems'])}. "
          f"Command: `unet-fast kernels {arches} --json benchmarks/{doc['file']}`.", "",
          "Every step of the report together (2-D and 3-D); the byte model's worst ratio of bytes moved to "
          "the compulsory floor is modelled, not measured. weight_reduce (after backward_fused, the one-pass "
          "backward of a step without ReLU) has dW alone as its own floor (kilobytes): its ratio reads large; the "
          "partials it sums count in the per-step modelled times of `unet-fast kernels`. backward_weight's "
          "partials are summed by backward_input's first programs.", "",
          "| arch | kernel | dtype | layout | rows | max registers | max spill stores (B) | "
          "max shared / limit (B) | tensor cores | cp.async | widest ld / st (B) | scalar 16-bit loads | atomics | "
          "worst x floor |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in doc["rows"]:
        groups.setdefault((r["arch"], r["kernel"], r["dtype"], r["layout"]), []).append(r)
    for (arch, kernel, dtype, layout), rows in groups.items():
        ok = [r for r in rows if not r["error"]]

        def worst(k, ok=ok):
            return max((r.get(k) or 0) for r in ok) if ok else "-"
        ratio = worst("x_floor")
        md.append(f"| {arch} | {kernel} | {dtype} | {layout} | {len(rows)} | {worst('registers')} | "
                  f"{worst('spill_stores')} | {worst('shared')} / {rows[0]['shared_limit']} | "
                  f"{'/'.join(sorted({r['tensor_cores'] for r in ok}))} | {worst('cp_async')} | "
                  f"{worst('widest_load')} / {worst('widest_store')} | {worst('scalar_16bit_loads')} | "
                  f"{sum(r.get('atomics') or 0 for r in ok)} | {f'{ratio:.2f}x' if ratio else '-'} |")
    return md + modelled_steps(doc)


def modelled_steps(doc, dtype="bf16", layout="channels_last") -> list:
    """The report's per-step table (its time model of an H100 SXM) for one dtype and layout."""
    rows = [r for r in doc.get("steps", {}).get("rows", []) if (r["dtype"], r["layout"]) == (dtype, layout)]
    if not rows:
        return []
    md = ["", f"Per step, {dtype} {layout}, MODELLED, NOT MEASURED (the report's time model of an H100 SXM: "
              "each kernel the largest of its DRAM, L2, issue and tensor-core bounds plus a launch; floor = the "
              "step's floor bytes at 3.0 TB/s; eager and torch.compile modelled pass by pass):", "",
          "| step | direction | floor us | fused us | % of floor | eager us | compile us |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['step']} | {r['direction']} | {r['floor_us']:.1f} | {r['fused_us']:.1f} | "
                  f"{percent_shown(r['pct_of_floor'])} | {r['eager_us']:.1f} | {r['compile_us']:.1f} |")
    return md


def _key(r):
    return (r["case_label"], r["dtype"], r["layout"], r["mode"], r["provider"])


def merge(docs):
    """One document per device: a GPU run (benchmarks/gpu_run.sh) runs the harness in parts, one
    JSON file each. Rows are merged, a later run replacing an earlier row with the same
    case/dtype/layout/mode/provider, and the speedups recomputed over the merged eager rows (a
    part without eager rows has none of its own)."""
    by_device = {}
    for doc in sorted(docs, key=lambda d: d["meta"]["date"]):
        by_device.setdefault((doc["meta"]["device"], doc["meta"]["device_name"]), []).append(doc)
    merged = []
    for (_kind, _name), group in by_device.items():
        rows = {}
        for doc in group:
            for r in doc["rows"]:
                if r["status"] == "ok" or _key(r) not in rows:
                    rows[_key(r)] = dict(r)
        rows = list(rows.values())
        eager = {_key(r)[:4]: r["median_ms"] for r in rows if r["provider"] == "eager" and r["status"] == "ok"}
        for r in rows:
            base = eager.get(_key(r)[:4])
            r["speedup_vs_eager"] = base / r["median_ms"] if base and r["status"] == "ok" else None
        merged.append(dict(meta=group[-1]["meta"], files=group, rows=rows))
    return merged


def ms(v):
    return NM if v is None else (f"{v:.3f}" if v < 100 else f"{v:.1f}")


def find(rows, case, provider, dtype, layout, mode):
    for r in rows:
        if (r["case"], r["provider"], r["dtype"], r["layout"], r["mode"]) == (case, provider, dtype, layout, mode):
            return r
    return None


def cell(r, key="median_ms", fmt=ms):
    if r is None:
        return NM
    if r["status"] != "ok":
        return r["status"]
    return fmt(r[key])


# Options `unet-fast bench --json` records that say nothing about what was measured.
_NOT_REPEATED = ("command", "no_progress", "plot")


def bench_command(options, json_path=None) -> str:
    """The `unet-fast bench` command line that repeats a run, rebuilt from the options its JSON
    records (meta.options): every option that was set, under its own flag (--json json_path when
    given)."""
    if not options:
        return "not recorded"
    options = dict(options, **({"json": json_path} if json_path else {}))
    words = ["unet-fast", "bench"]
    for key, value in options.items():
        if key in _NOT_REPEATED or value is None or value is False or value == []:
            continue
        if key == "rep_ms" and options.get("device") == "cpu":  # GPU timing only
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif key == "shape":
            for shape in value:
                words += [flag, ",".join(map(str, shape))]
        else:
            words += [flag, str(value)]
    return " ".join(words)


def conditions(merged):
    lines = []
    for doc in merged["files"]:
        m = doc["meta"]
        floor = f"{m['ceiling_gbps']:.0f} GB/s ({m['ceiling_source']})" if m.get("ceiling_gbps") else "none"
        lines.append(f"- `{doc['file']}`: **{m['device_name']}**, torch {m['torch']}, triton {m['triton']}, "
                     f"commit `{m['commit']}`, {m['date']}, {len(doc['rows'])} rows. Timer: {m['timer']}; "
                     f"{m['n_sets']} input sets rotated. Fused path: {m['fused_path']}. "
                     f"Bandwidth floor (100%): {floor}; measured copy {m['measured_copy_gbps']:.1f} GB/s."
                     + (f" Load average {m['loadavg_start']} at start, {m.get('loadavg_end')} at end "
                        f"({m['cpu_count']} cores)."
                        if m.get("loadavg_start") is not None and m["device"] == "cpu" else "")
                     + f" Command: `{bench_command(m.get('options'))}`.")
    return "\n".join(lines)


def table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines


def waterfall(doc):
    rows = doc["rows"] if doc else []
    base = find(rows, "unet", "eager", "fp32", "contiguous", "full")
    body = []
    for label, step_p, model_p, dtype, layout in WATERFALL:
        steps = [cell(find(rows, s[0], step_p, dtype, layout, "full")) for s in STEPS]
        train = find(rows, "unet", model_p, dtype, layout, "full")
        infer = find(rows, "unet", model_p, dtype, layout, "forward")
        speed = (f"{base['median_ms'] / train['median_ms']:.2f}x"
                 if base and train and base["status"] == train["status"] == "ok" else NM)
        body.append([label, f"{step_p} / {model_p}", dtype, layout, *steps, cell(train), cell(infer),
                     speed, cell(infer, "rel_err", lambda v: f"{v:.1e}")])
    return table(["step", "provider (steps / UNet)", "dtype", "layout", "up3 fwd+bwd ms",
                  "up2 fwd+bwd ms", "up1 fwd+bwd ms", "UNet train step ms", "UNet inference ms",
                  "train speedup vs eager fp32", "UNet rel err vs fp64"], body)


def roofline_table(doc):
    import torch

    from unet_fast.cases import decoder_cases
    rows = doc["rows"] if doc else []
    body = []
    for case, (name, cin, cout, h) in zip(decoder_cases(batch=8, image_size=512),
                                          ((s[0], s[1], s[2], s[4]) for s in STEPS)):
        nbytes = case.nbytes("forward", torch.bfloat16)
        fused = find(rows, name, "fused", "bf16", "channels_last", "forward")
        body.append([f"{name} {cin}->{cout} @{h}x{h}", f"x [8,{cin},{h},{h}] skip [8,{cout},{2*h},{2*h}]",
                     f"{nbytes / 1e6:.1f}", f"{nbytes / (H100_COPY_GBPS * 1e9) * 1e6:.1f}",
                     *(cell(find(rows, name, p, "bf16", "channels_last", "forward")) for p in ("eager", "compiled")),
                     cell(fused), cell(fused, "pct_of_floor", lambda v: f"{v:.0f}%")])
    return table(["step", "shapes (batch 8)", "fwd MB (bf16)", "predicted floor us at 3.0 TB/s",
                  "eager ms", "compiled ms", "fused ms", "fused % of floor"], body)


def pivot(doc):
    """One line per (case, dtype, layout, mode), one column group per provider present."""
    rows = doc["rows"]
    # A provider skipped in every row (torch.compile on the CPU is opt-in) gets a sentence, not columns.
    providers = [p for p in ORDER if any(r["provider"] == p and r["status"] != "skipped" for r in rows)]
    skipped = sorted({(r["provider"], r["note"]) for r in rows
                      if r["status"] == "skipped" and r["provider"] not in providers})
    header = ["case", "shapes", "dtype", "layout", "mode"]
    for p in providers:
        header += [f"{p} ms"] + ([f"{p} speedup"] if p != "eager" else [])
    header += ["fused GB/s", "fused % floor", "fused peak MB"]
    body = []
    keys = list(dict.fromkeys((r["case"], r["case_label"], r["dtype"], r["layout"], r["mode"]) for r in rows))
    for case, label, dtype, layout, mode in keys:
        shapes = next(r["shapes"] for r in rows if r["case_label"] == label)
        shape_text = ", ".join(f"{k} {v}" for k, v in shapes.items() if k in ("x", "skip", "image"))
        line = [label, shape_text, dtype, layout, MODE[mode]]
        for p in providers:
            r = find(rows, case, p, dtype, layout, mode)
            line.append(cell(r) if r else "-")
            if p != "eager":
                line.append(cell(r, "speedup_vs_eager", lambda v: f"{v:.2f}x") if r else "-")
        fused = find(rows, case, "fused", dtype, layout, mode)
        line += [cell(fused, "gbps", lambda v: "-" if v is None else f"{v:.1f}"),
                 cell(fused, "pct_of_floor", lambda v: "-" if v is None else f"{v:.1f}%"),
                 cell(fused, "peak_mb", lambda v: "n/a" if v is None else f"{v:.0f}")]
        body.append(line)
    notes = [f"Not run: {', '.join(sorted({p for p, _ in skipped}))} ({skipped[0][1]})."] if skipped else []
    return table(header, body) + ([""] + notes if notes else [])


def cpu_target(doc, target=1.5):
    """The CPU goal: the fused op's PyTorch path at least 1.5x eager, forward, per decoder step."""
    out = []
    for r in doc["rows"]:
        if r["kind"] == "step" and r["provider"] == "fused" and r["mode"] == "forward" and r["speedup_vs_eager"]:
            verdict = "meets" if r["speedup_vs_eager"] >= target else "**misses**"
            out.append(f"{r['case']} {r['dtype']} {r['layout']}: {r['speedup_vs_eager']:.2f}x ({verdict})")
    return f"Target fused >= {target}x eager, forward: " + "; ".join(out) + "." if out else ""


def networks_section(doc) -> list:
    """Whole MONAI / nnU-Net networks, fused (unet_fast.fuse) against unfused: one line per
    network and mode, with the training step's peak memory."""
    m = doc["meta"]
    md = [f"From `{doc['file']}`: {m['kind']}. {m['device_name']}, torch {m['torch']}, monai {m.get('monai')}, "
          f"dynamic_network_architectures {m.get('dynamic_network_architectures')}, commit `{m['commit']}`, "
          f"{m['date']}; load average {m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end. "
          f"Peak memory: {m.get('memory_method')}. Command: `{m.get('command')}`.", "",
          "| network | input | mode | unfused ms | fused ms | speedup | unfused peak MiB | fused peak MiB | "
          "decoder steps fused |", "|---|---|---|---|---|---|---|---|---|"]
    rows = doc["networks"]
    for net in dict.fromkeys(r["network"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["network"] == net):
            pick = {r["provider"]: r for r in rows if r["network"] == net and r["mode"] == mode}
            fused, unfused = pick.get("fused"), pick.get("unfused")
            if not fused or not unfused:
                continue
            peak = [f"{r['peak_memory']['step_peak_mib']:.0f}" if r.get("peak_memory") else "n/a"
                    for r in (unfused, fused)]
            size = "x".join(map(str, fused["size"]))
            layout = fused.get("layout", "contiguous")  # files before the layout option: contiguous
            md.append(f"| {net} | {fused['batch']}x{size} {fused['dtype']} {layout} | {mode} | "
                      f"{unfused['median_ms']:.0f} | {fused['median_ms']:.0f} | "
                      f"{unfused['median_ms'] / fused['median_ms']:.2f}x | {peak[0]} | {peak[1]} | "
                      f"{fused['fused_steps']} of {fused['decoder_steps']} |")
    return md


def superseded_section(docs) -> list:
    if not docs:
        return []
    md = ["## Superseded runs (not tabled)", ""]
    for doc in docs:
        name = os.path.basename(doc["file"])
        md.append(f"- `{doc['file']}` measured {SUPERSEDED[name]}; repeat it on the current code with "
                  f"`{bench_command(doc['meta'].get('options'), 'benchmarks/results/NEW-FILE.json')}`.")
    return md + [""]


def render(docs) -> str:
    superseded = [d for d in docs if os.path.basename(d["file"]) in SUPERSEDED]
    docs = [d for d in docs if d not in superseded]
    networks = [d for d in docs if "networks" in d]
    static = [d for d in docs if d not in networks and d["meta"].get("kind", "").startswith(STATIC)]
    docs = merge([d for d in docs if d not in static and d not in networks])
    gpu = [d for d in docs if d["meta"]["device"] == "cuda"]
    cpu = [d for d in docs if d["meta"]["device"] == "cpu"]
    md = ["# unet_fast benchmark results", "",
          "Generated by `python benchmarks/render_results.py` from `benchmarks/results/*.json` "
          "(written by `unet-fast bench --json FILE`); do not edit by hand. Bytes are compulsory traffic "
          "(unet_fast/bench/roofline.py); % floor is achieved GB/s over the device's copy ceiling; "
          "speedups are over the eager PyTorch reference (unet_fast.reference) with the same dtype, "
          "layout and mode.", "", "## GPU", ""]
    if not gpu:
        md += ["No GPU run has been recorded yet (`benchmarks/gpu_run.sh` makes one): every GPU "
               "number below is **not measured**.", ""]
    for doc in gpu or [None]:
        md += [conditions(doc) if doc else "Planned: batch 8, 512x512, the default UNet (base 64).", "",
               "### Waterfall (each row adds one technique to the row above)", ""]
        md += waterfall(doc) + [""]
        md += ["### Decoder steps against the roofline (bf16, channels_last, forward)", "",
               "The predicted floor is the byte formula at the 3.0 TB/s H100 copy ceiling: "
               "a prediction, not a measurement.", ""]
        md += roofline_table(doc) + [""]
        if doc:
            md += ["### Every row", ""] + pivot(doc) + [""]
            md += [f"![speedup over eager]({f['file'][:-5]}.png)" for f in doc["files"]
                   if os.path.exists(os.path.join(HERE, f["file"][:-5] + ".png"))] + [""]
    md += ["## Static analysis: the kernels compiled for the GPU on a CPU (not run, not timed)", "",
           "Written by `unet-fast kernels --json FILE` (benchmarks/README.md). Registers "
           "and spills from `ptxas -v`, shared memory from the compiled kernel; no number here is a "
           "speed.", ""]
    for doc in static:
        md += static_section(doc) + [""]
    if not static:
        md += ["No static report recorded.", ""]
    md += ["## CPU", "",
           "The fused op on the CPU is its PyTorch path (unet_fast/torch_path.py), not Triton. "
           "Wall-clock timings on a shared machine: read the speedups, not the last digit.", ""]
    if not cpu:
        md += ["No CPU run recorded.", ""]
    for doc in cpu:
        md += [conditions(doc), ""] + pivot(doc) + [""]
        md += [f"![speedup over eager]({f['file'][:-5]}.png)" for f in doc["files"]
               if os.path.exists(os.path.join(HERE, f["file"][:-5] + ".png"))] + [""]
        target = cpu_target(doc)
        if target:
            md += [target, ""]
    md += ["## Whole networks: MONAI and nnU-Net, fused by `unet_fast.fuse` against unfused", ""]
    # GPU runs first, as for the op's rows.
    for doc in sorted(networks, key=lambda d: d["meta"]["device"] != "cuda"):
        md += networks_section(doc) + [""]
    if not networks:
        md += ["No whole-network run recorded.", ""]
    md += superseded_section(superseded)
    return "\n".join(md).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if RESULTS.md is out of date")
    args = parser.parse_args(argv)
    text = render(load())
    if args.check:
        with open(OUT) as f:
            current = f.read()
        if current != text:
            print("benchmarks/RESULTS.md is out of date: run python benchmarks/render_results.py")
            return 1
        return 0
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(OUT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))  # unet_fast from this checkout, installed or not
    sys.exit(main())
