"""weakclip-generate: pseudo masks for a whole image set with any engine (SPEC §5).

    weakclip-generate --images VOC2012/JPEGImages --out masks --model runs/voc/final.safetensors \\
        [--engine torch|onnxruntime|tensorrt] [--scales official --flip] [--labels cls_labels.json] [--crf voc]

Pipeline: decoding threads prefetch images → batched multi-view sliding-window inference on the engine
(:func:`weakclip.inference.predict_probs`) → writer threads do label masking, the optional CRF and the atomic writes
(probabilities ``probs/<name>.npy`` float16 (K, H, W), overlays ``overlays/<name>.png``, and last the mask
``<name>.png``, which marks the image finished).

* **Resumable**: images whose outputs exist are skipped (unless ``--overwrite``); every file is written to a hidden
  temporary in the same folder and renamed, so a killed run leaves only complete outputs plus hidden ``.*.tmp.*``
  files, which the next run of the same shard deletes.
* **Failures** (unreadable, corrupt or empty images; an inference error on one image) do not stop the run: they are
  listed with the reason in ``OUT/failures.txt`` (``failures-<i>-of-<N>.txt`` per shard), and the exit status is 1.
* **Sharding**: ``--shard i/N`` (0-based) takes every N-th image from the sorted list starting at i; without it,
  ``RANK``/``WORLD_SIZE`` (torchrun) are used, and ``--device cuda`` becomes ``cuda:$LOCAL_RANK``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # `python engines/generate.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weakclip.engines.base import (
    Engine,
    EngineError,
    PrecisionError,
    auto_engine,
    available_engines,
    check_engine_options,
    check_model_file,
    get_engine,
)
from weakclip.errors import ArgumentParser, OutputError, RuntimeFailure, UsageError, cli
from weakclip.inference import OFFICIAL_SCALES, InferenceOptions, postprocess, predict_probs
from weakclip.io import IMAGE_EXTS, FolderLock, atomic_path, file_sha256, read_image, save_mask_png, voc_palette

# Temporaries of weakclip.io.atomic_path: ".<final name>.<8 random chars>.tmp<suffix>".
_TMP_RE = re.compile(r"^\.(?P<orig>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
_MAX_CONSECUTIVE_INFERENCE_FAILURES = 10


@dataclass(frozen=True)
class Item:
    name: str  # output name (no extension; may contain '/')
    path: Path  # input image


class _Inline:
    """An executor that runs the task at submit time (``--workers 0``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------------
# inputs, shards, outputs


def list_inputs(images: str | os.PathLike, root: str | os.PathLike | None = None, ext: str = ".jpg") -> list[Item]:
    """Images of a folder (sorted by name), or of a list file (one name or relative path per line).

    List entries without an image extension get ``ext`` (``png`` and ``.png`` alike); relative entries are resolved
    against ``root`` (default: the list file's folder).  Duplicate output names are an error; so is an image file
    given where a folder or list is expected, a list that is not text, and no images at all.
    """
    images = Path(images)
    ext = ext if ext.startswith(".") else f".{ext}"
    if images.is_dir():
        items = [
            Item(p.stem, p)
            for p in sorted(images.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
        ]
        if not items:
            raise RuntimeFailure(
                f"--images {images}: no images found in this folder (suffixes {', '.join(IMAGE_EXTS)})"
            )
    elif images.is_file():
        if images.suffix.lower() in IMAGE_EXTS:
            raise UsageError(f"--images {images}: this is an image file; --images takes an image folder or a list "
                             "file (one image name or path per line)")  # fmt: skip
        if root is not None and not Path(root).is_dir():
            raise UsageError(f"--image-root {root}: no such folder")
        base = Path(root) if root is not None else images.parent
        try:
            lines = images.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--images {images}: not a text list file (one image name or path per line)") from None
        items = []
        for line in lines:
            if not line.strip():
                continue
            entry = line.split()[0]
            p = Path(entry)
            if p.suffix.lower() in IMAGE_EXTS:
                name, path = str(p.with_suffix("")), p
            else:
                name, path = entry, Path(entry + ext)
            items.append(Item(name, path if path.is_absolute() else base / path))
        if not items:
            raise RuntimeFailure(f"--images {images}: the list names no images")
        if not any(it.path.is_file() for it in items):  # stops at the first image found
            where = f"--image-root {root}" if root is not None else f"{base} (the list's folder; set --image-root)"
            raise UsageError(f"--images {images}: none of its {len(items)} images exist under {where}, e.g. "
                             f"{items[0].path}")  # fmt: skip
    else:
        raise UsageError(f"--images {images}: no such image folder or list file")
    seen: dict[str, Path] = {}
    for it in items:
        if it.name in seen:
            raise UsageError(f"two inputs map to the output name {it.name!r}: {seen[it.name]} and {it.path}")
        seen[it.name] = it.path
    return items


def unsupported_files(images: str | os.PathLike) -> collections.Counter:
    """Files of an image folder that are not read as images, counted by suffix (reported, never silently skipped)."""
    folder = Path(images)
    if not folder.is_dir():
        return collections.Counter()
    return collections.Counter(
        p.suffix.lower() or "(no suffix)"
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTS
    )


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"--shard must be i/N with 0 <= i < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def resolve_shard(shard: tuple[int, int] | None, env: dict[str, str] | os._Environ = os.environ) -> tuple[int, int]:
    """--shard if given, else RANK/WORLD_SIZE (torchrun), else 0/1."""
    if shard is not None:
        return shard
    if "WORLD_SIZE" in env and "RANK" in env:
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    return 0, 1


def shard_items(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Every ``count``-th item starting at ``index`` (interleaved: balanced when image sizes vary along the list)."""
    return list(items[index::count])


def parse_scales(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "official":
        return OFFICIAL_SCALES
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales: expected 'official' or a comma list of ratios, got {text!r}"
        ) from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--scales: ratios must be positive, got {text!r}")
    return scales


def _engine_opt(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--engine-opt expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


class Outputs:
    """Where the files of one image go."""

    def __init__(self, out: Path, save_probs: bool, probs_dtype: str = "float16") -> None:
        self.out, self.save_probs, self.probs_dtype = out, save_probs, probs_dtype

    def all_paths(self, names: Sequence[str]) -> set[Path]:
        """Every file this run may write (masks, probabilities, overlays, config, failure lists)."""
        per_image = {p for n in names for p in (self.mask(n), self.probs(n), self.overlay(n))}
        return per_image | {self.out / "generate_config.json", self.out / "failures.txt"}

    def mask(self, name: str) -> Path:
        return self.out / f"{name}.png"

    def probs(self, name: str) -> Path:
        return self.out / "probs" / f"{name}.npy"

    def overlay(self, name: str) -> Path:
        return self.out / "overlays" / f"{name}.png"

    def finished(self, name: str) -> bool:
        return self.mask(name).is_file() and (not self.save_probs or self.probs(name).is_file())

    def remove_stale_temporaries(self, names: Sequence[str]) -> int:
        """Delete leftover atomic-write temporaries of ``names`` (from a killed run); other shards' are untouched."""
        mine = {p for n in names for p in (self.mask(n), self.probs(n), self.overlay(n))}
        removed = 0
        for d in {p.parent for p in mine}:
            if not d.is_dir():
                continue
            for entry in d.iterdir():
                m = _TMP_RE.match(entry.name)
                if m and d / m.group("orig") in mine:
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed


def overlay_names(items: Sequence[Item], n: int) -> set[str]:
    """``n`` names spread evenly over the whole (unsharded) list: the same sample whatever the sharding."""
    if n <= 0 or not items:
        return set()
    idx = np.unique(np.linspace(0, len(items) - 1, num=min(n, len(items))).round().astype(int))
    return {items[i].name for i in idx}


def make_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, 3W + 2·gap, 3) uint8 panel: the image | the palette mask | palette colours blended over the image where
    the mask is not background (255 "unknown" included).  Panels are separated by white gaps."""
    pal = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)
    blend = image.astype(np.float32)
    fg = mask != 0
    blend[fg] = (1 - alpha) * blend[fg] + alpha * pal[mask[fg]]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    colour = pal[mask].astype(np.uint8)
    return np.concatenate([image, gap, colour, gap, blend.round().clip(0, 255).astype(np.uint8)], axis=1)


def _write_outputs(
    outputs: Outputs,
    item: Item,
    image: np.ndarray,
    probs: Any,
    labels: Sequence[int] | None,
    crf: str | None,
    palette: bool,
    overlay: bool,
) -> None:
    pred = postprocess(image, probs, labels, crf)
    if outputs.save_probs:
        with atomic_path(outputs.probs(item.name)) as tmp, open(tmp, "wb") as f:
            np.save(f, pred.probs.astype(outputs.probs_dtype))  # (K, H, W)
    if overlay:
        with atomic_path(outputs.overlay(item.name)) as tmp:
            Image.fromarray(make_overlay(image, pred.mask)).save(tmp, format="PNG")
    save_mask_png(outputs.mask(item.name), pred.mask, palette=palette)  # last: marks the image finished


def _prefetch(pool: Any, items: Sequence[Item], depth: int) -> Iterator[tuple[Item, np.ndarray | None, str | None]]:
    """Decode ``items`` in ``pool`` keeping ``depth`` in flight; yields (item, image or None, failure reason)."""
    it = iter(items)
    pending: collections.deque = collections.deque()
    for item in it:
        pending.append((item, pool.submit(read_image, item.path)))
        if len(pending) >= depth:
            break
    while pending:
        item, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(read_image, nxt.path)))
        try:
            yield item, fut.result(), None
        except (OSError, ValueError) as e:
            yield item, None, _one_line(e)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


# ----------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="weakclip-generate",
        description="Generate pseudo masks with multi-scale × flip sliding-window inference.",
    )
    io = ap.add_argument_group("inputs and outputs")
    io.add_argument("--images", required=True, help="image folder, or a list file (one name or path per line)")
    io.add_argument("--image-root", help="folder that list-file entries are relative to (default: the list's folder)")
    io.add_argument(
        "--ext", default=".jpg", help="extension added to list entries that have none (default: %(default)s)"
    )
    io.add_argument("--out", required=True, help="output folder: <name>.png masks (+ probs/, overlays/)")
    io.add_argument("--labels", help="image-level labels (JSON name->[idx], text 'name idx ...', or cls_labels.npy): "
                    "pixels predicted as an absent class become 255")  # fmt: skip
    io.add_argument("--save-probs", action="store_true", help="also write probs/<name>.npy (K, H, W)")
    io.add_argument("--probs-dtype", choices=("float16", "float32"), default="float16",
                    help="dtype of the saved probabilities (default: %(default)s; float32 = the official .npy)")  # fmt: skip
    io.add_argument("--no-palette", dest="palette", action="store_false", help="plain L masks, no VOC palette")
    io.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="write colour overlays for N sample images into OUT/overlays/",
    )
    io.add_argument("--overwrite", action="store_true",
                    help="recompute images whose outputs already exist, also when they were made with other settings")  # fmt: skip
    io.add_argument("--shard", type=parse_shard, help="i/N: process every N-th image from i (default: RANK/WORLD_SIZE)")

    en = ap.add_argument_group("engine")
    en.add_argument(
        "--engine",
        default="auto",
        help=f"auto (from the model file: .safetensors → torch, .onnx → onnxruntime, TensorRT plan → tensorrt), "
        f"one of {available_engines()}, or module:Factory (default: %(default)s)",
    )
    en.add_argument("--model", help="checkpoint (torch), .onnx (onnxruntime) or engine/ONNX file (tensorrt)")
    en.add_argument("--device", help="engine device: cpu, cuda, or auto (cuda when torch sees a GPU, else cpu); "
                    "cuda → cuda:$LOCAL_RANK under torchrun")  # fmt: skip
    en.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"),
                    help="precision tier: torch engine fp32 / fp16 (CUDA) / bf16 (CPU with avx512_bf16 or amx_bf16, "
                    "or a bf16 GPU); onnxruntime: the tier of the .onnx file (int8: weakclip_int8.onnx from "
                    "export --int8); a tier the machine or file lacks is refused in one line")  # fmt: skip
    en.add_argument("--channels-last", action="store_true", help="torch engine: NHWC memory format")
    en.add_argument("--engine-opt", type=_engine_opt, action="append", default=[], metavar="KEY=VALUE",
                    help="extra engine option (value parsed as JSON when possible); repeatable")  # fmt: skip

    inf = ap.add_argument_group("inference (defaults follow the engine's crop c: stride round(2c/3), base size c)")
    inf.add_argument("--scales", type=parse_scales, default=(1.0,),
                     help="comma list of view ratios, or 'official' = 0.5,0.75,1.0,1.25,1.5,1.75 (default: 1.0)")  # fmt: skip
    inf.add_argument("--flip", action="store_true", help="add horizontally flipped views (official: on)")
    inf.add_argument(
        "--crf",
        choices=("none", "voc", "coco"),
        default="none",
        help="dense CRF post-processing (default: %(default)s)",
    )
    inf.add_argument("--crop", type=int, help="sliding-window size")
    inf.add_argument("--stride", type=int, help="sliding-window stride")
    inf.add_argument("--base-size", type=int, help="short side of the ratio-1 view")
    inf.add_argument("--max-long", type=int, help="long-side limit of the ratio-1 view (default 4 × base size)")
    inf.add_argument("--batch", type=int, default=16, help="windows per engine call (default: %(default)s)")
    inf.add_argument(
        "--chunk", type=int, default=4, help="images whose windows are batched together (default: %(default)s)"
    )
    inf.add_argument(
        "--tta-device",
        default="cpu",
        help="where views are resized and merged; cuda only with engines that take device tensors (torch) (default: %(default)s)",
    )

    ex = ap.add_argument_group("execution")
    ex.add_argument(
        "--workers", type=int, default=4, help="decoding threads and writing threads, 0 = inline (default: %(default)s)"
    )
    ex.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); 1-2 per process "
                     "when several shards share a CPU")  # fmt: skip
    ex.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return ap


def _engine_opts(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.device:
        dev = args.device
        if dev == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cuda" and "LOCAL_RANK" in os.environ:
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        opts["device"] = dev
    if args.precision:
        opts["precision"] = args.precision
    if args.channels_last:
        opts["channels_last"] = True
    opts.update(dict(args.engine_opt))
    return opts


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, PrecisionError) as e:  # a bad input found by library code (labels, options, precision)
        raise UsageError(str(e)) from None
    except EngineError as e:
        raise RuntimeFailure(str(e)) from None


# Settings that decide what a mask is; a resume into a folder made with other values is refused.
def _settings(args: argparse.Namespace, engine_name: str) -> dict[str, Any]:
    return {
        "model_sha256": file_sha256(args.model) if args.model else None,
        "engine": engine_name,
        "precision": args.precision or "engine default",
        "scales": list(args.scales),
        "flip": bool(args.flip),
        "crop": args.crop,
        "stride": args.stride,
        "base_size": args.base_size,
        "max_long": args.max_long,
        "crf": args.crf,
        "labels_sha256": file_sha256(args.labels) if args.labels else None,
        "palette": bool(args.palette),
        "save_probs": bool(args.save_probs),
        "probs_dtype": args.probs_dtype if args.save_probs else None,
    }


def _check_resume(out: Path, settings: dict[str, Any], finished: int, overwrite: bool) -> None:
    """Refuse to add masks to a folder whose finished masks were made with other settings (one line per rule)."""
    if overwrite or finished == 0:
        return
    cfg_path = out / "generate_config.json"
    if not cfg_path.is_file():
        raise UsageError(
            f"{out}: holds {finished} of this run's mask files but no generate_config.json (not made by weakclip "
            "generate, or by an older version); choose another --out, or --overwrite to redo them"
        )
    try:
        recorded = json.loads(cfg_path.read_text()).get("settings")
    except ValueError as e:
        raise UsageError(f"{cfg_path}: unreadable ({e}); choose another --out, or --overwrite to redo it") from None
    if recorded is None:
        raise UsageError(f"{cfg_path}: records no settings (older version); use --overwrite to redo these masks")
    diff = [f"{k} {recorded.get(k)!r} → {v!r}" for k, v in settings.items() if recorded.get(k) != v]
    if diff:
        raise UsageError(
            f"{out}: {finished} masks there were made with other settings ({'; '.join(diff)}); resuming would mix "
            "them: choose another --out, or --overwrite to redo them all"
        )


def _check_out_location(out: Path, args: argparse.Namespace, items: Sequence[Item], outputs: Outputs) -> None:
    """No output location may equal or contain an input, and no output file may be an input file."""
    o = out.resolve()
    folders = {it.path.parent.resolve() for it in items}
    if Path(args.images).is_dir():
        folders.add(Path(args.images).resolve())
    for folder in sorted(folders):
        if folder == o or folder.is_relative_to(o):
            where = "is" if folder == o else "contains"
            raise UsageError(
                f"--out {out} {where} the input image folder {folder}: masks would be written among (or over) the "
                "images; choose an output folder outside the inputs"
            )
    for flag in ("model", "labels"):
        given = getattr(args, flag)
        if given and Path(given).resolve() in {p.resolve() for p in outputs.all_paths([])}:
            raise UsageError(f"--out {out} would overwrite the --{flag} file {given}; choose another output folder")


def _check_crf_available(crf: str) -> None:
    if crf == "none":
        return
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--crf {crf} needs pydensecrf (pip install pydensecrf2, or the [train] extra): {e}") from None


def _model_class_names(model: str | None, engine_name: str) -> list[str] | None:
    """The class names recorded in the model file (checkpoint or ONNX metadata), read without loading the model;
    None where the file records none (a TensorRT plan, a custom engine)."""
    if not model:
        return None
    try:
        if engine_name == "torch":
            from weakclip.checkpoint import read_checkpoint_metadata

            names = read_checkpoint_metadata(model).get("class_names")
        elif engine_name in ("onnxruntime", "tensorrt") and Path(model).suffix.lower() == ".onnx":
            from weakclip.engines.ort_engine import read_onnx_metadata

            names = read_onnx_metadata(model).get("class_names")
        else:
            return None
        return list(json.loads(names)) if names else None
    except (OSError, ValueError, RuntimeError):
        return None  # the engine's own loading reports what is wrong with the file


def read_image_labels(path: str | os.PathLike, num_classes: int | None) -> dict[str, list[int]]:
    """``--labels`` read for a ``num_classes``-class model (vector length and indices checked), as one usage line."""
    from weakclip.data.labels import load_labels

    try:
        return load_labels(path, num_classes)
    except FileNotFoundError:
        raise UsageError(f"--labels {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--labels {path}: not a label file (JSON, text 'name idx ...' or cls_labels.npy)") from None
    except (OSError, ValueError) as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(str(path)) else f"--labels {path}: {msg}") from None


def run(args: argparse.Namespace, engine: Engine | None = None) -> int:
    """The generation loop (``engine`` may be given directly instead of built from ``args.engine``).

    Every check that needs no model runs first (inputs, output location, labels against the model file's class
    count, a resume's settings); the output folder is then owned by this run (:class:`weakclip.io.FolderLock`), and
    a failure that no later image can avoid (disk full, read-only, lock lost) stops the run at once.
    """
    from weakclip.io import owned_output_folder

    t0 = time.perf_counter()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for opt in ("batch", "chunk"):
        if getattr(args, opt) < 1:
            raise UsageError(f"--{opt} must be >= 1")
    out = Path(args.out)
    all_items = list_inputs(args.images, args.image_root, args.ext)
    odd = unsupported_files(args.images)
    if odd:
        listing = ", ".join(f"{n} × {suffix}" for suffix, n in sorted(odd.items()))
        print(f"{args.images}: {sum(odd.values())} file(s) are not images and are not read ({listing})")
    shard_i, shard_n = resolve_shard(args.shard)
    items = shard_items(all_items, shard_i, shard_n)
    outputs = Outputs(out, args.save_probs, args.probs_dtype)
    _check_out_location(out, args, all_items, outputs)
    _check_crf_available(args.crf)
    engine_name = args.engine
    if engine is not None:
        engine_name = engine.name or type(engine).__name__
    elif engine_name == "auto":
        if not args.model:
            raise UsageError(
                "--engine auto needs --model (a .safetensors checkpoint, an .onnx model or a TensorRT plan)"
            )
        engine_name = auto_engine(args.model)
    if engine is None:  # the wrong kind of model file or an unknown option: refused before anything is written
        if engine_name not in available_engines() and ":" not in engine_name:
            raise UsageError(f"--engine {engine_name}: unknown engine; choose auto or one of {available_engines()}")
        check_model_file(engine_name, args.model)
        check_engine_options(engine_name, _engine_opts(args))

    labels: dict[str, list[int]] | None = None
    if args.labels:
        names = engine.class_names if engine is not None else _model_class_names(args.model, engine_name)
        labels = read_image_labels(args.labels, len(names) if names else None)
        missing = [it.name for it in items if it.name not in labels]
        if missing:
            raise UsageError(f"--labels {args.labels}: no image-level label for {len(missing)} image(s), e.g. "
                             f"{missing[:5]}")  # fmt: skip
    settings = _settings(args, engine_name)
    shard_note = f" (shard {shard_i}/{shard_n})" if shard_n > 1 else ""
    fail_name = "failures.txt" if shard_n == 1 else f"failures-{shard_i}-of-{shard_n}.txt"
    fail_path = out / fail_name
    failures: list[tuple[str, str]] = []
    done = skipped = 0
    with owned_output_folder(
        out, "weakclip generate", own_files=("generate_config.json", fail_name), shard=(shard_i, shard_n)
    ) as lock:
        finished = [it for it in items if outputs.finished(it.name)]
        _check_resume(out, settings, len(finished), args.overwrite)
        outputs.remove_stale_temporaries([it.name for it in items])
        todo = items if args.overwrite else [it for it in items if not outputs.finished(it.name)]
        skipped = len(items) - len(todo)
        if todo:
            own_engine = engine is None
            if engine is None:
                engine = get_engine(engine_name, args.model, **_engine_opts(args))
            try:
                if labels is not None:
                    for it in todo:
                        bad = [c for c in labels[it.name] if not 1 <= c < engine.num_classes]
                        if bad:
                            raise UsageError(f"--labels {args.labels}: image {it.name!r} has class {bad} outside "
                                             f"1..K-1 (K = {engine.num_classes})")  # fmt: skip
                opts = InferenceOptions.for_engine(
                    engine,
                    crop=args.crop,
                    stride=args.stride,
                    base_size=args.base_size,
                    max_long=args.max_long,
                    scales=args.scales,
                    flip=args.flip,
                    max_batch=args.batch,
                    device=args.tta_device,
                )
                _write_config(out, args, engine, opts, settings)
                _startup_line(args, engine, opts, len(todo), skipped)
                done, failures = _generate(
                    args, engine, opts, todo, outputs, labels, overlay_names(all_items, args.overlays), lock
                )
            finally:
                if own_engine:
                    engine.close()

        if failures:
            with atomic_path(fail_path) as tmp:
                tmp.write_text("".join(f"{name}\t{reason}\n" for name, reason in sorted(failures)))
        elif fail_path.exists():
            fail_path.unlink()  # all earlier failures have been retried successfully (or are finished)
    elapsed = time.perf_counter() - t0
    print(
        f"summary{shard_note}: {done} images done, {skipped} skipped (already finished), {len(failures)} failed, "
        f"{done / max(elapsed, 1e-9):.2f} images/s ({elapsed:.1f} s)"
    )
    if failures:
        raise RuntimeFailure(f"{len(failures)} image(s) failed; names and reasons in {fail_path}")
    return 0


def _startup_line(args: argparse.Namespace, engine: Engine, opts: InferenceOptions, todo: int, skipped: int) -> None:
    import torch

    from weakclip.progress import print_startup

    d = engine.describe()
    scales = ",".join(f"{r:g}" for r in opts.scales)
    print_startup(
        "generate",
        engine=d.get("engine", engine.name),
        model=args.model,
        precision=d.get("precision", args.precision or "default"),
        views=f"{opts.num_views} (scales {scales}{' × flip' if opts.flip else ''}, crop {opts.crop}/stride {opts.stride})",
        crf=args.crf,
        device=d.get("device", "cpu"),
        threads=torch.get_num_threads(),
        note=f"{todo} image(s) to do, {skipped} already finished",
    )


def _write_config(
    out: Path, args: argparse.Namespace, engine: Engine, opts: InferenceOptions, settings: dict[str, Any]
) -> None:
    cfg = {
        "settings": settings,
        "args": {k: v for k, v in vars(args).items() if k not in ("shard",)},
        "engine": engine.describe(),
        "inference": opts.to_dict(),
    }
    with atomic_path(out / "generate_config.json") as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, default=str) + "\n")


class BatchJob:
    """The loop shared by the batch tools (generate, seeds): decoding threads prefetch images, the caller does the
    per-image work, writing threads write the outputs; failures are recorded with a reason, a progress bar counts
    every image once.  A write failure that no later image can avoid (disk full, read-only, permission: a fatal
    :class:`~weakclip.errors.OutputError`) or a lost output lock stops the run at once, with the images done so far
    in the message.  Use as a context manager (closes the bar and the pools)."""

    def __init__(
        self,
        total: int,
        workers: int,
        desc: str,
        show_progress: bool,
        max_pending_writes: int,
        lock: FolderLock | None = None,
    ) -> None:
        from weakclip.progress import progress

        self.lock = lock  # checked every few images: a lost output lock stops the run
        self.workers = max(workers, 0)
        self.decode_pool = (
            cf.ThreadPoolExecutor(self.workers, thread_name_prefix="decode") if self.workers else _Inline()
        )
        self.write_pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="write") if self.workers else _Inline()
        self.writes: collections.deque = collections.deque()
        self.max_pending_writes = max_pending_writes
        self.failures: list[tuple[str, str]] = []
        self.done = 0
        # tqdm bar on a terminal; a line every 30 s (WEAKCLIP_PROGRESS_INTERVAL) with done/total, img/s, ETA otherwise
        self.bar = progress(total=total, desc=desc, unit="img", disable=not show_progress, dynamic_ncols=True,
                            mininterval=1.0)  # fmt: skip

    def images(self, items: Sequence[Item], depth: int) -> Iterator[tuple[Item, np.ndarray | None, str | None]]:
        """(item, decoded image or None, failure reason), decoding ``depth`` ahead."""
        return _prefetch(self.decode_pool, items, depth)

    def fail(self, item: Item, reason: str) -> None:
        self.failures.append((item.name, reason))
        self.bar.update(1)

    def write(self, item: Item, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a writing thread; a failure is recorded as ``what: reason``."""
        self.writes.append((item, what, self.write_pool.submit(fn, *args)))
        self.collect(self.max_pending_writes)

    def collect(self, block_until: int = 0) -> None:
        """Wait for writes until at most ``block_until`` are pending (finished ones are taken at once, so a fatal
        write error stops the run at the next image)."""
        while self.writes and (len(self.writes) > block_until or self.writes[0][2].done()):
            item, what, fut = self.writes.popleft()
            try:
                fut.result()
                self.done += 1
            except OutputError as e:
                if e.fatal:
                    self.stop(e)
                self.failures.append((item.name, f"{what}: {_one_line(e)}"))
            except Exception as e:  # noqa: BLE001 - a failed write is recorded, the run goes on
                self.failures.append((item.name, f"{what}: {_one_line(e)}"))
            self.bar.update(1)
            if self.lock is not None and (self.done + len(self.failures)) % 16 == 0:
                self.lock.check()

    def stop(self, e: OutputError) -> NoReturn:
        """End the run at a fatal output error: no later image could be written either."""
        for _, _, fut in self.writes:
            fut.cancel()
        e.args = (f"{e}; stopped after {self.done} image(s) written (a rerun resumes from there)",)
        raise e

    def __enter__(self) -> BatchJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.decode_pool.shutdown(wait=True)
        self.write_pool.shutdown(wait=True)


def _generate(
    args: argparse.Namespace,
    engine: Engine,
    opts: InferenceOptions,
    todo: Sequence[Item],
    outputs: Outputs,
    labels: dict[str, list[int]] | None,
    overlays: set[str],
    lock: FolderLock | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    depth = 2 * max(args.workers, 1) + args.chunk
    job = BatchJob(len(todo), args.workers, "generate", args.progress, max_pending_writes=depth, lock=lock)
    consecutive_inference_failures = 0
    crf = None if args.crf == "none" else args.crf

    def infer(batch: list[tuple[Item, np.ndarray]]) -> None:
        nonlocal consecutive_inference_failures
        try:
            results = list(zip(batch, predict_probs(engine, [img for _, img in batch], opts)))
        except Exception:  # noqa: BLE001 - retry one by one to find the image at fault
            if len(batch) == 1:
                results = []
                _record_inference_failure(batch[0][0], sys.exc_info()[1])
            else:
                for one in batch:
                    infer([one])
                return
        for (item, image), probs in results:
            consecutive_inference_failures = 0
            lab = labels[item.name] if labels is not None else None
            job.write(item, "writing outputs", _write_outputs, outputs, item, image, probs, lab, crf, args.palette,
                      item.name in overlays)  # fmt: skip

    def _record_inference_failure(item: Item, e: BaseException | None) -> None:
        nonlocal consecutive_inference_failures
        job.fail(item, f"inference: {_one_line(e) if e else 'unknown error'}")
        consecutive_inference_failures += 1
        if consecutive_inference_failures >= _MAX_CONSECUTIVE_INFERENCE_FAILURES:
            raise EngineError(
                f"inference failed on {consecutive_inference_failures} images in a row; last: {job.failures[-1][1]}"
            )

    with job:
        batch: list[tuple[Item, np.ndarray]] = []
        for item, image, reason in job.images(todo, depth):
            if image is None:
                job.fail(item, reason or "unreadable")
                continue
            batch.append((item, image))
            if len(batch) == args.chunk:
                infer(batch)
                batch = []
        if batch:
            infer(batch)
        job.collect(0)
    return job.done, job.failures


if __name__ == "__main__":
    sys.exit(main())
