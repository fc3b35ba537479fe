"""Turn the output folder of one ``benchmarks/gpu_check.sh`` run into the repository's committed GPU results and the
README's GPU rows: ``benchmarks/results/gpu_*``, the README's ``<!-- gpu-results -->`` block and its GPU time rows.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weakclip.benchmarks.common import VOC_TRAIN_AUG, fmt
from weakclip.data.io import atomic_path, write_text_atomic
from weakclip.errors import ArgumentParser, UsageError, cli

REPO = Path(__file__).resolve().parents[1]
BLOCK = "gpu-results"
TIME_TABLE_HEADING = "Time to expect per 500×375 image"
TIME_ROW_PREFIX = "| GPU"
SHIPPED_ROW = "engine-fp16"  # what `weakclip generate --device cuda --precision fp16` runs


@dataclass
class GpuRun:
    """What one gpu_check.sh run left in its output folder."""

    out: Path
    check: dict[str, Any]
    e2e: dict[str, Any] | None = None
    coattn: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # result name in benchmarks/results -> source file


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (the output folder of benchmarks/gpu_check.sh --out)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def collect(out: Path) -> GpuRun:
    """Read and check a gpu_check.sh output folder."""
    if not out.is_dir():
        raise UsageError(f"{out}: not a folder (the output folder of benchmarks/gpu_check.sh --out)")
    check = _read_json(out / "gpu_check.json")
    for key in ("status", "exit_code", "steps", "elapsed_s", "time_limit_s"):
        if key not in check:
            raise UsageError(f"{out / 'gpu_check.json'}: no '{key}' (not written by benchmarks/gpu_check.sh)")
    if check.get("dry_run"):
        raise UsageError(f"{out / 'gpu_check.json'}: a --dry-run (no GPU measured): nothing to commit")
    run = GpuRun(out=out, check=check, files={"gpu_check.json": out / "gpu_check.json"})
    if (out / "gpu_e2e.json").is_file():
        run.e2e = _read_json(out / "gpu_e2e.json")
        if not isinstance(run.e2e.get("rows"), list) or "device" not in run.e2e:
            raise UsageError(f"{out / 'gpu_e2e.json'}: no 'rows' / 'device' (not written by bench_gpu_e2e)")
        if run.e2e.get("smoke"):
            raise UsageError(f"{out / 'gpu_e2e.json'}: a CPU smoke run, not a GPU measurement")
        run.files |= {n: out / n for n in ("gpu_e2e.json", "gpu_e2e.md", "gpu_e2e.png") if (out / n).is_file()}
    coattn = sorted(out.glob("cuda_coattn_*.json"))
    if len(coattn) > 1:
        raise UsageError(f"{out}: more than one cuda_coattn_*.json ({', '.join(p.name for p in coattn)})")
    if coattn:
        run.coattn = _read_json(coattn[0])
        run.files["gpu_coattn.json"] = coattn[0]
        if coattn[0].with_suffix(".md").is_file():
            run.files["gpu_coattn.md"] = coattn[0].with_suffix(".md")
    return run


def _duration(minutes: float) -> str:
    return f"{minutes:.1f} min" if minutes < 60 else f"{minutes / 60:.1f} h"


def device_name(run: GpuRun) -> str:
    if run.e2e:
        return str(run.e2e["device"].get("name", "unknown GPU"))
    if run.coattn:
        return str(run.coattn.get("meta", {}).get("device", "unknown GPU"))
    return "unknown GPU"


def check_markdown(run: GpuRun) -> str:
    """gpu_check.md: the steps of the run, one line each."""
    c = run.check
    lines = [
        f"# GPU check — {device_name(run)}",
        "",
        f"Status **{c['status']}** (exit {c['exit_code']}) in {c['elapsed_s']} s of a {c['time_limit_s']} s limit"
        + (f"; cut by the time limit: {', '.join(c['cut'])}" if c.get("cut") else "")
        + ".",
        "",
        "| step | result | note |",
        "|---|---|---|",
    ]
    for name, step in c["steps"].items():
        lines.append(f"| {name} | {step.get('result', '')} | {str(step.get('note', '')).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def e2e_table(e2e: dict[str, Any]) -> str:
    """The README's end-to-end table: measured rows, then one line for the rest with their reasons."""
    lines = [
        "| row | what | windows/s | × official | images/s, 12 views / 1 scale | VOC train_aug, 12 views "
        "| % of dense fp16 peak | peak GPU MiB, allocated / reserved | argmax agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rest = []
    for r in e2e["rows"]:
        if r.get("status") != "ok":
            rest.append(f"{r['key']} ({r.get('status')}: {r.get('reason', '')})")
            continue
        frac = r.get("fraction_of_dense_fp16_peak")
        agr = r.get("argmax_agreement")
        lines.append(
            f"| {r['key']} | {r.get('description', '')} | {r['windows_per_s']:.1f} | {fmt(r.get('speedup'), '.2f')}× "
            f"| {r['images_per_s_12_views']:.2f} / {r['images_per_s_single_scale']:.1f} "
            f"| {_duration(r['voc_train_aug_minutes_12_views'])} | {'–' if frac is None else f'{100 * frac:.1f} %'} "
            f"| {fmt(r.get('peak_allocated_mib'), '.0f')} / {fmt(r.get('peak_reserved_mib'), '.0f')} "
            f"| {'–' if agr is None else f'{100 * agr:.2f} %'} |"
        )
    if rest:
        lines += ["", "Not measured: " + "; ".join(rest) + "."]
    return "\n".join(lines)


def coattn_line(coattn: dict[str, Any]) -> str:
    parts = "; ".join(
        f"{r['op']} {r['dtype']} B={r['batch']}: {r['fused_ms']:.3f} ms vs {r['torch_ms']:.3f} ms ({r['speedup']:.2f}×)"
        for r in coattn.get("results") or []
    )
    cut = coattn.get("cut") or []
    tail = f"; cut by the time limit at {cut[0]}" if cut else ""
    return f"Fused co-attention kernels vs PyTorch (`gpu_coattn.md`): {parts or 'no row measured'}{tail}."


def readme_block(run: GpuRun) -> str:
    """The README's GPU paragraph and table (between the gpu-results markers)."""
    c = run.check
    steps = c["steps"]
    head = (
        f"**GPU: {device_name(run)}** (`benchmarks/gpu_check.sh`, one call of the lent machine: {c['status']} in "
        f"{c['elapsed_s']} s of its {c['time_limit_s']} s limit, build included; results in `benchmarks/results/gpu_*`,"
        f" regenerated here by `make gpu-results OUT=...`)."
    )
    lines = [head, ""]
    if run.e2e:
        e, d = run.e2e, run.e2e["device"]
        lines += [
            f"End to end, {e['preset']} at {e['size']}² (random weights), batch {e['batch']}; torch {d.get('torch')}"
            f"{', CUDA ' + str(d['cuda']) if d.get('cuda') else ''}; median of {e['repeats']} repeats × {e['iters']}"
            f" calls after {e['warmup']} warm-up calls; {e['gflop_per_window']:g} GFLOP per window; peak GPU memory "
            "= `torch.cuda.max_memory_allocated` / `max_memory_reserved` during the row; fp32 rows without TF32; "
            f"{e.get('timestamp', '')}:",
            "",
            e2e_table(e),
            "",
        ]
        verdict = {True: "met", False: "NOT met", None: "not evaluated"}
        if goals := e.get("goals"):
            lines += ["Goals:", ""]
            lines += [
                f"- {g['goal']}: **{verdict[g.get('met')]}** ({g.get('value') or '–'}; {g.get('note', '')})"
                for g in goals
            ]
            lines.append("")
    else:
        lines += ["No end-to-end results in this run (gpu_e2e.json missing).", ""]
    if run.coattn:
        lines += [coattn_line(run.coattn), ""]
    for name in ("build", "parity"):
        if name in steps:
            lines.append(f"Check step {name}: {steps[name].get('result')} ({steps[name].get('note', '')}).")
    if c.get("cut"):
        lines.append(f"Cut by the time limit: {', '.join(c['cut'])}.")
    return "\n".join(lines).rstrip() + "\n"


def time_rows(run: GpuRun) -> list[str]:
    """The "Time to expect" table's GPU rows: the shipped fp16 engine and the fastest row, from gpu_e2e.json."""
    name = device_name(run).replace("NVIDIA ", "")
    e2e = run.e2e or {}
    ok = {r["key"]: r for r in e2e.get("rows", []) if r.get("status") == "ok"}
    if not ok:
        return [f"{TIME_ROW_PREFIX} engines ({name}) | not measured (gpu_check: {run.check['status']}) | | | | |"]
    single, views = (e2e["protocol_windows"][k] for k in ("single_scale", "views_12"))
    best = max(ok.values(), key=lambda r: r["windows_per_s"])["key"]
    rows = []
    for key in dict.fromkeys([k for k in (SHIPPED_ROW, best) if k in ok]):
        r = ok[key]
        wps = r["windows_per_s"]
        what = f"{key}: {r.get('description', '')}"
        if key == SHIPPED_ROW:
            what += " (`generate --device cuda --precision fp16`)"
        rows.append(
            f"{TIME_ROW_PREFIX} {name}, {what} | {wps:.1f} | {single / wps:.3f} | {views / wps:.2f} "
            f"| {_duration(VOC_TRAIN_AUG * single / wps / 60)} | {_duration(VOC_TRAIN_AUG * views / wps / 60)} |"
        )
    return rows


def replace_marked_block(text: str, name: str, content: str, where: str = "README") -> str:
    """``text`` with what lies between the lines ``<!-- name:begin ... -->`` and ``<!-- name:end -->`` replaced by
    ``content`` (the marker lines stay)."""
    n = re.escape(name)
    pattern = re.compile(rf"(^<!-- {n}:begin[^\n]*-->\n)(.*?)(^<!-- {n}:end -->$)", re.S | re.M)
    found = pattern.findall(text)
    if len(found) != 1:
        block = f"'<!-- {name}:begin -->' ... '<!-- {name}:end -->'"
        raise UsageError(f"{where}: expected one {block} block, found {len(found)}")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(3), text)


def replace_table_rows(text: str, heading: str, prefix: str, rows: list[str], where: str = "README") -> str:
    """In the first Markdown table after the line that starts with ``heading``, the rows that start with ``prefix``
    replaced by ``rows`` (at the place of the first such row, else at the table's end)."""
    lines = text.split("\n")
    start = next((i for i, ln in enumerate(lines) if ln.startswith(heading)), None)
    if start is None:
        raise UsageError(f"{where}: no line starting with '{heading}'")
    first = next((i for i in range(start, len(lines)) if lines[i].startswith("|")), None)
    if first is None:
        raise UsageError(f"{where}: no table after '{heading}'")
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table = lines[first:end]
    at = next((i for i, ln in enumerate(table) if ln.startswith(prefix)), len(table))
    kept = [ln for ln in table if not ln.startswith(prefix)]
    table = kept[:at] + rows + kept[at:]
    return "\n".join(lines[:first] + table + lines[end:])


def update_readme(text: str, run: GpuRun, where: str = "README") -> str:
    text = replace_marked_block(text, BLOCK, readme_block(run), where)
    return replace_table_rows(text, TIME_TABLE_HEADING, TIME_ROW_PREFIX, time_rows(run), where)


def write_results(run: GpuRun, results: Path) -> list[Path]:
    """benchmarks/results/gpu_* from the run (each written atomically); returns the paths written."""
    for name, src in run.files.items():
        with atomic_path(results / name) as tmp:
            shutil.copyfile(src, tmp)
    return [*(results / name for name in run.files), write_text_atomic(results / "gpu_check.md", check_markdown(run))]


@cli
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="weakclip bench gpu-results", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the output folder of one benchmarks/gpu_check.sh run (the device tool's $OUT)")
    ap.add_argument("--results", help="where the gpu_* files go (default: this checkout's benchmarks/results)")
    ap.add_argument("--readme", help="the README to regenerate (default: this checkout's README.md)")
    args = ap.parse_args(argv)
    readme = Path(args.readme) if args.readme else REPO / "README.md"
    results = Path(args.results) if args.results else REPO / "benchmarks" / "results"
    if not readme.is_file():
        raise UsageError(f"--readme {readme}: not found (outside a checkout, pass --readme and --results)")
    run = collect(Path(args.out))
    text = update_readme(readme.read_text(), run, str(readme))  # checked before anything is written
    written = write_results(run, results)
    write_text_atomic(readme, text)
    names = ", ".join(p.name for p in written)
    print(
        f"gpu-results: {device_name(run)}, {run.check['status']}: wrote {names} in {results}; regenerated the GPU rows of {readme}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
