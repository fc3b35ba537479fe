"""``weakclip report``: one HTML page (no script; plots and thumbnails in ``assets/``) comparing mask runs against the
ground truth.  A run's numbers are its per-image :func:`~weakclip.data.metrics.confusion` counts, summed."""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import html
import importlib.resources
import json
import math
import os
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weakclip.data.io import IMAGE_EXTS, atomic_path, palette_blend, read_image, read_mask, voc_palette_array
from weakclip.data.metrics import SegMetrics, confusion, metrics_from_matrix
from weakclip.errors import UsageError
from weakclip.masks.evaluate import find_class_names

DEFAULT_GALLERY = 6  # images per gallery section
DEFAULT_THUMB = 160  # longer side of a thumbnail, pixels
DEFAULT_IGNORE_HEAVY = 0.5  # a mask with more than this share of 255 pixels is "ignore-heavy"
ASSETS = "assets"
LISTED_NAMES = 10  # names listed per coverage line (the rest is a count)
# a run's settings, as rows of the page's settings table
SETTING_ROWS = ("made by", "model", "model sha256", "engine", "precision", "views", "CRF", "label masking", "date")


@dataclass
class RunInfo:
    path: Path
    name: str  # shown on the page
    kind: str  # "generate", "seeds" or "masks" (a folder without a config file)
    settings: dict[str, str]  # display rows (SETTING_ROWS, or "made by" and "date" only)
    image_root: Path | None  # where the images that made the masks are, when the config says so


@dataclass
class RunStats:
    matrix: np.ndarray  # (K, K+1) confusion counts summed over the images this run has
    image_miou: np.ndarray  # (N,) per-image mIoU, NaN where the run has no mask
    ignore_share: np.ndarray  # (N,) share of the mask's pixels that are 255, NaN where no mask
    missing: list[str] = field(default_factory=list)  # images with GT but no mask
    metrics: SegMetrics = field(init=False)  # of ``matrix``, set once the stream is over

    @property
    def scored(self) -> int:
        return int(np.isfinite(self.ignore_share).sum())


@dataclass
class Report:
    index: Path
    runs: list[RunInfo]
    stats: list[RunStats]
    images: list[str]
    class_names: list[str]
    shown_classes: list[int]  # class indices drawn (present in the GT or some run)
    files: list[Path]  # every file written (index.html last)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _date(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def _views(scales: Sequence[Any], flip: bool) -> str:
    listed = ",".join(f"{float(s):g}" for s in scales)
    return f"{len(scales) * (2 if flip else 1)} (scales {listed}{' × flip' if flip else ''})"


def _image_dir(args: dict[str, Any]) -> Path | None:
    """The image folder a tool read, from its recorded arguments (``--image-root``, or ``--images`` when a folder)."""
    return next((Path(args[k]) for k in ("image_root", "images") if args.get(k) and Path(args[k]).is_dir()), None)


def describe_run(path: str | os.PathLike) -> RunInfo:
    """Name, settings and image folder of a mask folder, from its ``generate_config.json`` or ``seeds_config.json``."""
    path = Path(path)
    gen, seeds = path / "generate_config.json", path / "seeds_config.json"
    if (cfg := _load_json(gen)) is not None:
        s, args = cfg.get("settings") or {}, cfg.get("args") or {}
        engine = str(s.get("engine") or (cfg.get("engine") or {}).get("engine") or "?")
        precision = str(s.get("precision") or "?")
        scales, flip = s.get("scales") or [1.0], bool(s.get("flip"))
        crf, labels, model = s.get("crf") or "none", "yes" if s.get("labels_sha256") else "no", args.get("model")
        model, sha = Path(model).name if model else "?", str(s.get("model_sha256") or "?")[:12]
        row = ("weakclip generate", model, sha, engine, precision, _views(scales, flip), str(crf), labels, _date(gen))
        name = f"{engine} {precision}, {len(scales) * (2 if flip else 1)} view(s)"
        name += (f", CRF {crf}" if crf != "none" else "") + (", labels" if labels == "yes" else "")
        return RunInfo(path, name, "generate", dict(zip(SETTING_ROWS, row)), _image_dir(args))
    if (cfg := _load_json(seeds)) is not None:
        s, args = cfg.get("settings") or {}, cfg.get("args") or {}
        opts, preset, labels = s.get("options") or {}, s.get("preset", "?"), "yes (seeds use the image labels)"
        views, sha = _views(opts.get("scales") or [1.0], bool(opts.get("flip"))), str(s.get("clip_weights") or "?")[:24]
        crf = f"CLIP-ES, 255 below {opts.get('ignore_threshold')}" if opts.get("crf") else "none"
        row = ("weakclip seeds (CLIP-ES)", f"CLIP {preset}", sha, "torch", "fp32", views, crf, labels, _date(seeds))
        return RunInfo(path, f"CLIP-ES seeds ({preset})", "seeds", dict(zip(SETTING_ROWS, row)), _image_dir(args))
    settings = {"made by": "? (no generate_config.json or seeds_config.json)", "date": _date(path)}
    return RunInfo(path, path.name or str(path), "masks", settings, None)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig: Any, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)


def plot_iou_chart(rep: Report, path: Path) -> None:
    """Per-class IoU of every run as grouped bars; below it, the change between consecutive runs."""
    plt, runs, stats, shown = _pyplot(), rep.runs, rep.stats, rep.shown_classes
    R, C, cls = len(runs), len(shown), list(shown)
    width = max(7.0, min(40.0, 0.22 * C * max(R, 2)))
    rows = 2 if R > 1 else 1
    fig, axes = plt.subplots(rows, 1, figsize=(width, 3.2 * rows + 1.2), squeeze=False, sharex=True)
    x, colours = np.arange(C), plt.get_cmap("tab10")

    def bars(ax: Any, values: list[np.ndarray], labels: list[str], first: int, ylabel: str) -> None:
        w = 0.8 / len(values)
        for r, (v, label) in enumerate(zip(values, labels)):
            colour = colours((r + first) % 10)
            ax.bar(x - 0.4 + w * (r + 0.5), 100 * np.nan_to_num(v, nan=0.0), w, color=colour, label=label)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)

    iou = [st.metrics.iou[cls] for st in stats]
    legend = [f"{run.name} (mIoU {100 * st.metrics.miou:.1f})" for run, st in zip(runs, stats)]
    bars(axes[0, 0], iou, legend, 0, "IoU (%)")
    axes[0, 0].set_ylim(0, 100)
    top = (0.5, 1.0 + 0.12 * math.ceil(R / 2))
    axes[0, 0].legend(loc="upper center", bbox_to_anchor=top, ncol=2, fontsize=8, frameon=False)
    if R > 1:  # the change between consecutive runs
        deltas = [b - a for a, b in zip(iou, iou[1:])]
        bars(axes[1, 0], deltas, [f"{b.name} − {a.name}" for a, b in zip(runs, runs[1:])], 1, "Δ IoU (points)")
        axes[1, 0].axhline(0, color="black", linewidth=0.8)
        axes[1, 0].legend(loc="best", fontsize=8, frameon=False)
    rot = {"rotation": 60, "ha": "right"} if C > 8 else {"rotation": 0, "ha": "center"}
    axes[-1, 0].set_xticks(x, [rep.class_names[c] for c in shown], fontsize=8 if C <= 40 else 6, **rot)
    fig.tight_layout()
    _save_fig(fig, path, dpi=90 if C <= 40 else 72)


def plot_confusion(rep: Report, r: int, path: Path) -> None:
    """Run ``r``'s row-normalised confusion matrix (rows: GT class, columns: predicted class + "255"), log colours."""
    from matplotlib.colors import LogNorm

    plt, st, shown = _pyplot(), rep.stats[r], rep.shown_classes
    C, cls, matrix = len(shown), list(shown), st.matrix
    m = matrix[np.ix_(cls, [*shown, matrix.shape[0]])].astype(np.float64)
    rows_sum = matrix[cls].sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows_sum > 0, m / rows_sum, np.nan)
    side = max(4.5, min(16.0, 0.28 * C + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    blank = np.ma.masked_where(~(norm > 0), norm)  # zero and NaN cells: blank
    im = ax.imshow(blank, cmap=cmap, norm=LogNorm(vmin=1e-4, vmax=1.0), interpolation="nearest")
    fs = 8 if C <= 25 else (6 if C <= 50 else 4)
    names = [rep.class_names[c] for c in shown]
    ax.set_xticks(range(C + 1), names + ["255"], rotation=90, fontsize=fs)
    ax.set_yticks(range(C), names, fontsize=fs)
    ax.set(xlabel="predicted", ylabel="ground truth")
    ax.set_title(f"{rep.runs[r].name}: mIoU {100 * st.metrics.miou:.2f}", fontsize=9)
    if C <= 15:
        for (i, j), v in np.ndenumerate(norm):
            if v > 0:
                text, colour = f"{100 * v:.0f}" if v >= 0.01 else "<1", "white" if v < 0.3 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the GT row")
    fig.tight_layout()
    _save_fig(fig, path, dpi=80 if C <= 50 else 64)


PAGE = string.Template((importlib.resources.files(__package__) / "report_page.html").read_text(encoding="utf-8"))


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.6f}"


def _td(text: Any, cls: str = "", attrs: str = "") -> str:
    return f'<td class="{cls}"{attrs}>{text}</td>' if cls else f"<td>{text}</td>"


def _tr(cells: Iterable[str], attrs: str = "") -> str:
    return f"<tr{attrs}>{''.join(cells)}</tr>"


def _table(cls: str, head: Iterable[str], rows: Iterable[str]) -> str:
    """A scrolling table, one row a line: the header cells ``head`` (escaped here), then ``rows``."""
    body = "\n".join([_tr(f"<th>{_e(h)}</th>" for h in head), *rows])
    return f'<div class="scroll"><table class="{cls}">\n{body}\n</table></div>'


def _delta_cell(d: float) -> str:
    if not math.isfinite(d):
        return _td("n/a", "num")
    return _td(f"{100 * d:+.2f}", "num " + ("pos" if d > 0 else ("neg" if d < 0 else "")))


def _swatch(c: int, name: str) -> str:
    r, g, b = voc_palette_array()[c]
    return f'<span><i class="sw" style="background: rgb({r},{g},{b})"></i>{_e(name)}</span>'


def _class_label(c: int, class_names: Sequence[str]) -> str:
    return "255 (ignore / unknown)" if c == 255 else class_names[c]


def _figure(caption: str, src: str = "", alt: str = "", cls: str = "thumb") -> str:
    img = f'<img class="{cls}" src="{ASSETS}/{src}" alt="{_e(alt or caption)}">' if src else ""
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def make_report(
    gt_dir: str | os.PathLike,
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    run_names: Sequence[str] | None = None,
    images: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    class_source: str = "",
    image_root: str | os.PathLike | None = None,
    gallery: int = DEFAULT_GALLERY,
    thumb: int = DEFAULT_THUMB,
    ignore_heavy: float = DEFAULT_IGNORE_HEAVY,
    ignore_index: int = 255,
    progress_options: dict[str, Any] | None = None,
) -> Report:
    """Write ``out/index.html``, ``assets/``, ``report.json`` and ``per_image.csv`` comparing the mask folders
    ``runs`` (first and last: the gallery's "before" and "after") against ``gt_dir``; UsageError on bad input."""
    from weakclip.progress import progress

    gt_dir, out = Path(gt_dir), Path(out)
    run_dirs = [Path(r) for r in runs]
    root = Path(image_root) if image_root is not None else None
    if not run_dirs:
        raise UsageError("name at least one folder of masks to report on")
    if not gt_dir.is_dir():
        raise UsageError(f"--gt {gt_dir}: not a folder")
    if bad := [d for d in run_dirs if not d.is_dir()]:
        raise UsageError(f"{bad[0]}: not a folder of masks")
    if twice := [d for k, d in enumerate(run_dirs) if d.resolve() in {q.resolve() for q in run_dirs[:k]}]:
        raise UsageError(f"{twice[0]}: given twice")
    inputs = [("--gt", gt_dir), *(("a run", r) for r in run_dirs), *([("--image-root", root)] if root else [])]
    for what, p in inputs:
        if out.resolve() == p.resolve():
            raise UsageError(f"--out {out} is {what} folder; write the report elsewhere (e.g. {out / 'report'})")
    if root is not None and not root.is_dir():
        raise UsageError(f"--image-root {root}: not a folder")
    if gallery < 0 or thumb < 16 or not 0 < ignore_heavy <= 1:
        raise UsageError("--gallery must be >= 0, --thumb >= 16 and --ignore-heavy in (0, 1]")
    infos = [describe_run(r) for r in run_dirs]
    if run_names is not None and len(run_names) != len(infos):
        raise UsageError(f"--names gives {len(run_names)} name(s) for {len(infos)} run(s)")
    for info, n in zip(infos, run_names or []):
        info.name = n
    counts = Counter(info.name for info in infos)
    for info in infos:  # two runs with the same description: tell them apart by folder
        if counts[info.name] > 1:
            info.name = f"{info.name} [{info.path.name or info.path}]"
    if class_names is None:
        class_names, class_source = find_class_names(run_dirs, gt_dir)
    class_names = list(class_names)
    K = len(class_names)
    if not 1 <= K < ignore_index:
        raise UsageError(f"{K} classes: expected 1..{ignore_index - 1}")
    if images is None:
        images = sorted(p.stem for p in gt_dir.glob("*.png") if not p.name.startswith("."))
        if not images:
            raise UsageError(f"--gt {gt_dir}: no .png ground-truth masks")
    images = list(images)
    if absent := [n for n in images if not (gt_dir / f"{n}.png").is_file()]:
        raise UsageError(f"--gt {gt_dir}: no ground truth for {len(absent)} listed image(s), e.g. {absent[:3]}")
    N = len(images)
    for info in infos:
        if not any((info.path / f"{n}.png").is_file() for n in images):
            raise UsageError(f"{info.path}: none of the {N} images has a mask here (<name>.png)")

    # one pass over the images: per-image confusion counts (the evaluation's), summed per run
    stats = [RunStats(np.zeros((K, K + 1), np.int64), np.full(N, np.nan), np.full(N, np.nan)) for _ in infos]
    gt_pixels = np.zeros(K, np.int64)  # every listed image's, whichever run has a mask for it
    for i, name in enumerate(progress(images, desc="report", unit="img", **(progress_options or {}))):
        try:
            gt = read_mask(gt_dir / f"{name}.png")
            valid = gt[gt != ignore_index]
            if valid.size and valid.max() >= K:
                raise ValueError(f"{gt_dir / f'{name}.png'}: ground truth has class {int(valid.max())} >= {K} classes")
            gt_pixels += np.bincount(valid, minlength=K)
            for info, st in zip(infos, stats):
                p = info.path / f"{name}.png"
                if not p.is_file():
                    st.missing.append(name)
                    continue
                pred = read_mask(p)
                conf = confusion(pred, gt, K, ignore_index, name=str(p))
                st.matrix += conf
                st.image_miou[i] = metrics_from_matrix(conf).miou
                st.ignore_share[i] = float((pred == ignore_index).mean())
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    used = gt_pixels > 0
    for st in stats:
        st.metrics = metrics_from_matrix(st.matrix)
        used |= (st.matrix[:, :K].sum(axis=1) > 0) | (st.matrix[:, :K].sum(axis=0) > 0)  # in the GT or predicted
    shown = [c for c in range(K) if used[c]]

    roots = [root] if root is not None else [info.image_root for info in infos if info.image_root is not None]
    if root is None and (gt_dir.parent / "JPEGImages").is_dir():
        roots.append(gt_dir.parent / "JPEGImages")

    rep = Report(out / "index.html", infos, stats, images, class_names, shown, files=[])
    assets, written = out / ASSETS, rep.files
    written.append(assets / "iou.png")
    plot_iou_chart(rep, written[0])
    for r in range(len(infos)):
        written.append(assets / f"confusion_{r}.png")
        plot_confusion(rep, r, written[-1])
    g_html, g_rows = _gallery(rep, gallery, gt_dir, roots, thumb)

    def write(name: str, text: str) -> None:
        with atomic_path(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(out / name)

    runs_json = [
        dict(name=info.name, path=str(info.path), settings=info.settings, images_scored=st.scored)
        | dict(gt_without_mask=len(st.missing), ignore_heavy=int((st.ignore_share > ignore_heavy).sum()))
        | st.metrics.to_dict(class_names)
        for info, st in zip(infos, stats)
    ]
    summary = dict(gt=str(gt_dir), images=N, class_names=class_names, class_names_from=class_source)
    summary |= dict(shown_classes=shown, gt_pixels=gt_pixels.tolist(), runs=runs_json, gallery=g_rows)
    summary["ignore_heavy_threshold"] = ignore_heavy
    write("report.json", json.dumps(summary, indent=1) + "\n")
    header = ["image", *(f"miou {info.name}" for info in infos), *(f"share 255 {info.name}" for info in infos)]
    cols = [st.image_miou for st in stats] + [st.ignore_share for st in stats]
    with atomic_path(out / "per_image.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *([name, *(_num(c[i]) for c in cols)] for i, name in enumerate(images))])
    written.append(out / "per_image.csv")

    omitted = f"{K - len(shown)} class slot(s) with no pixel in the ground truth or any run are left out."
    confusions = (
        _figure(info.name, f"confusion_{r}.png", f"confusion matrix of {info.name}", "confusion")
        for r, info in enumerate(infos)
    )
    page = PAGE.substitute(
        title=_e(f"Mask report: {', '.join(info.name for info in infos)}"),
        thumb=thumb,
        summary=_e(
            f"{N} images with ground truth in {gt_dir}; {K} classes from {class_source or 'the caller'}; "
            f"written {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}."
        ),
        settings_table=_settings_table(infos),
        scores_table=_scores_table(rep),
        omitted=_e(omitted if len(shown) < K else "Every class appears in the ground truth or a run."),
        iou_chart=f"{ASSETS}/iou.png",
        per_class_table=_per_class_table(rep, gt_pixels),
        confusion_figures="\n".join(confusions),
        legend=" ".join(_swatch(c, class_names[c]) for c in shown) + " " + _swatch(255, _class_label(255, class_names)),
        gallery=g_html,
        coverage_table=_coverage_table(rep, ignore_heavy),
    )
    write("index.html", page)
    keep = {p.name for p in written if p.parent == assets}
    for p in assets.iterdir():  # thumbnails of an earlier report in this folder
        if p.is_file() and p.name not in keep and p.suffix in (".png", ".jpg"):
            p.unlink()
    return rep


def _gallery_sections(images: Sequence[str], stats: Sequence[RunStats], n: int) -> list[tuple[str, str, list[int]]]:
    """(id, title, image indices): most gained and most lost between the first and the last run, worst of the last."""
    if n <= 0:
        return []
    first, last = stats[0].image_miou, stats[-1].image_miou
    sections = []
    if len(stats) > 1:
        delta = last - first
        ok = np.flatnonzero(np.isfinite(delta))
        order = ok[np.argsort(-delta[ok], kind="stable")]
        gain = [int(i) for i in order if delta[i] > 0][:n]
        lose = [int(i) for i in order[::-1] if delta[i] < 0][:n]
        sections.append(("gain", f"Most improved (first → last run), {len(gain)} image(s)", gain))
        sections.append(("lose", f"Most worsened (first → last run), {len(lose)} image(s)", lose))
    ok = np.flatnonzero(np.isfinite(last))
    worst = [int(i) for i in ok[np.argsort(last[ok], kind="stable")][:n]]
    sections.append(("worst", f"Lowest mIoU in the last run, {len(worst)} image(s)", worst))
    return sections


def _gallery(rep: Report, n: int, gt_dir: Path, roots: list[Path], thumb: int) -> tuple[str, list[dict[str, Any]]]:
    """The gallery's HTML and JSON rows; the thumbnails it writes are added to ``rep.files``."""
    from PIL import Image

    images, infos, stats, files, assets = rep.images, rep.runs, rep.stats, rep.files, rep.index.parent / ASSETS

    def save(rgb: np.ndarray, i: int, kind: str) -> str:
        img = Image.fromarray(rgb)
        img.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)  # overlays are drawn at full size, then shrunk
        files.append(assets / f"i{i:07d}_{kind}.jpg")
        with atomic_path(files[-1]) as tmp:
            img.save(tmp, format="JPEG", quality=82, optimize=True)
        return files[-1].name

    @functools.cache  # each image's thumbnails once, however many sections show it
    def thumbnails(i: int) -> tuple[list[str], list[int], str]:
        """The image, the GT overlay, each run's overlay ("" where a run has no mask); the classes; a note."""
        name = images[i]
        gt = read_mask(gt_dir / f"{name}.png")
        image, note = None, ""  # note: why the image is not shown
        found = (root / f"{name}{e}" for root in roots for ext in IMAGE_EXTS for e in (ext, ext.upper()))
        src = next((p for p in found if p.is_file()), None)
        if src is None:
            note = "image not found" if roots else ""
        else:
            try:
                image = read_image(src)
            except (OSError, ValueError) as e:
                note = f"image unreadable: {e}"
        if src is not None and image is not None and image.shape[:2] != gt.shape:
            note = f"{src.name} is {image.shape[1]}×{image.shape[0]}, the GT {gt.shape[1]}×{gt.shape[0]}"
            image = None
        masks = [read_mask(r.path / f"{name}.png") if (r.path / f"{name}.png").is_file() else None for r in infos]
        classes = sorted(set(np.unique(gt).tolist()).union(*(np.unique(m).tolist() for m in masks if m is not None)))
        out = [save(image, i, "image") if image is not None else "", save(palette_blend(image, gt), i, "gt")]
        out += [save(palette_blend(image, m), i, f"run{r}") if m is not None else "" for r, m in enumerate(masks)]
        return out, [c for c in classes if c != 0], note  # background is not coloured over the image

    parts, rows = [], []
    if not roots:
        no_images = "No image folder found (pass --image-root): masks are shown without the images."
        parts.append(f'<p class="note">{no_images}</p>')
    for sec_id, title, idx in _gallery_sections(images, stats, n):
        parts.append(f'<h3 id="gallery-{sec_id}">{_e(title)}</h3>')
        if not idx:
            parts.append('<p class="note">none</p>')
        for i in idx:
            name, (thumbs, classes, note) = images[i], thumbnails(i)
            captions = ["image" if note == "" else "no image", "ground truth"]
            captions += [f"{info.name}: mIoU {_pct(st.image_miou[i], 1)}" for info, st in zip(infos, stats)]
            figs = "".join(_figure(cap, a) for a, cap in zip(thumbs, captions))
            legend = " ".join(_swatch(c, _class_label(c, rep.class_names)) for c in classes)
            said = f" <span class=note>({_e(note)})</span>" if note else ""
            parts.append(
                f'<div class="gallery-row" data-section="{sec_id}"><div><b>{_e(name)}</b>{said}</div>'
                f'{figs}<div class="classes">{legend}</div></div>'
            )
            miou = [float(st.image_miou[i]) if math.isfinite(st.image_miou[i]) else None for st in stats]
            rows.append({"section": sec_id, "image": name, "miou": miou})
    return "\n".join(parts), rows


def _settings_table(infos: Sequence[RunInfo]) -> str:
    keys: list[str] = []
    for info in sorted(infos, key=lambda i: -len(i.settings)):  # the fullest description sets the row order
        keys += [k for k in info.settings if k not in keys]
    rows = [_tr([_td("folder"), *(_td(f"<code>{_e(info.path)}</code>") for info in infos)])]
    rows += [_tr([_td(_e(k)), *(_td(_e(info.settings.get(k, "–"))) for info in infos)]) for k in keys]
    return _table("settings", ["setting", *(info.name for info in infos)], rows)


def _scores_table(rep: Report) -> str:
    rows, stats = [], rep.stats
    for r, (info, st) in enumerate(zip(rep.runs, stats)):
        m = st.metrics
        delta = _delta_cell(m.miou - stats[r - 1].metrics.miou) if r else _td("–", "num")
        cells = [_td(_e(info.name)), _td(st.scored, "num"), _td(len(st.missing), "num"), _td(_pct(m.miou), "num miou")]
        cells += [delta, _td(_pct(m.pixel_acc), "num pixel-acc"), _td(_pct(m.unknown), "num")]
        rows.append(_tr(cells, f' data-run="{r}"'))
    head = ["run", "images scored", "GT without mask", "mIoU (%)", "Δ mIoU", "pixel accuracy (%)", "predicted 255 (%)"]
    return _table("scores", head, rows)


def _per_class_table(rep: Report, gt_pixels: np.ndarray) -> str:
    rows = []
    for c in rep.shown_classes:
        ious = [st.metrics.iou[c] for st in rep.stats]
        cells = [_td(_swatch(c, rep.class_names[c])), _td(int(gt_pixels[c]), "num gt-pixels")]
        cells += [_td(_pct(v), "num iou", f' data-run="{r}"') for r, v in enumerate(ious)]
        cells += [_delta_cell(b - a) for a, b in zip(ious, ious[1:])]
        rows.append(_tr(cells, f' data-class="{c}"'))
    deltas = [f"Δ {r + 1}−{r}" for r in range(len(rep.runs) - 1)]
    return _table("per-class", ["class", "GT pixels", *(info.name for info in rep.runs), *deltas], rows)


def _coverage_table(rep: Report, ignore_heavy: float) -> str:
    def listing(names: Sequence[str]) -> str:
        more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
        return _e(", ".join(names[:LISTED_NAMES]) + more) if names else "–"

    rows, images = [], rep.images
    for r, (info, st) in enumerate(zip(rep.runs, rep.stats)):
        heavy_idx = np.flatnonzero(np.nan_to_num(st.ignore_share, nan=0.0) > ignore_heavy)
        heavy_idx = heavy_idx[np.argsort(-st.ignore_share[heavy_idx], kind="stable")]
        heavy = [f"{images[i]} ({100 * st.ignore_share[i]:.0f} %)" for i in heavy_idx.tolist()]
        missing = f'<b class="missing">{len(st.missing)}</b> of {len(images)}: {listing(st.missing)}'
        heavy_cell = f'<b class="ignore-heavy">{len(heavy)}</b>: {listing(heavy)}'
        rows.append(_tr([_td(_e(info.name)), _td(missing), _td(heavy_cell)], f' data-run="{r}"'))
    head = ["run", "GT images without a mask", f"masks more than {100 * ignore_heavy:.0f} % 255 (ignore-heavy)"]
    return _table("coverage", head, rows)
