"""The one frame of the batch tools (``weakclip generate``, ``weakclip seeds``): inputs, shards, an owned output
folder, the resume check against the settings record, per-image failures, fatal stops and the summary."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from weakclip.data.io import (
    IMAGE_EXTS,
    FolderLock,
    atomic_path,
    owned_output_folder,
    palette_blend,
    read_image,
    save_mask_png,
    write_text_atomic,
)
from weakclip.errors import OutputError, RuntimeFailure, UsageError

# weakclip.data.io.atomic_path's temporaries: ".<final name>.<8 random chars>.tmp<suffix>".
_TMP_RE = re.compile(r"^\.(?P<orig>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
# Per-image compute failures in a row that end the run (a broken engine or model, not a bad image).
MAX_FAILURES_IN_ROW = 10


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


def _pool(workers: int, name: str) -> Any:
    return cf.ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else _Inline()


def list_inputs(images: str | os.PathLike, root: str | os.PathLike | None = None, ext: str = ".jpg") -> list[Item]:
    """Images of a folder (sorted by name), or of a list file (one name or path per line): entries without an image
    extension get ``ext``, relative ones are resolved against ``root`` (default: the list file's folder)."""
    images = Path(images)
    ext = ext if ext.startswith(".") else f".{ext}"
    if images.is_dir():
        items = [Item(p.stem, p) for p in _files(images) if p.suffix.lower() in IMAGE_EXTS]
        if not items:
            raise RuntimeFailure(
                f"--images {images}: no images found in this folder (suffixes {', '.join(IMAGE_EXTS)})"
            )
    elif images.is_file():
        if images.suffix.lower() in IMAGE_EXTS:
            raise UsageError(
                f"--images {images}: this is an image file; --images takes an image folder or a list file (one "
                "image name or path per line)"
            )
        if root is not None and not Path(root).is_dir():
            raise UsageError(f"--image-root {root}: no such folder")
        base = Path(root) if root is not None else images.parent
        try:
            lines = images.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--images {images}: not a text list file (one image name or path per line)") from None
        items = []
        for entry in (line.split()[0] for line in lines if line.strip()):
            p = Path(entry)
            name, path = (str(p.with_suffix("")), p) if p.suffix.lower() in IMAGE_EXTS else (entry, Path(entry + ext))
            items.append(Item(name, path if path.is_absolute() else base / path))
        if not items:
            raise RuntimeFailure(f"--images {images}: the list names no images")
        if not any(it.path.is_file() for it in items):  # stops at the first image found
            where = f"--image-root {root}" if root is not None else f"{base} (the list's folder; set --image-root)"
            raise UsageError(
                f"--images {images}: none of its {len(items)} images exist under {where}, e.g. {items[0].path}"
            )
    else:
        raise UsageError(f"--images {images}: no such image folder or list file")
    seen: dict[str, Path] = {}
    for it in items:
        if it.name in seen:
            raise UsageError(f"two inputs map to the output name {it.name!r}: {seen[it.name]} and {it.path}")
        seen[it.name] = it.path
    return items


def _files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def read_inputs(images: str | os.PathLike, root: str | os.PathLike | None, ext: str) -> list[Item]:
    """:func:`list_inputs`, with a line about the files of the folder that are not read (never silently skipped)."""
    items = list_inputs(images, root, ext)
    others = _files(Path(images)) if Path(images).is_dir() else []
    odd = collections.Counter(p.suffix.lower() or "(no suffix)" for p in others if p.suffix.lower() not in IMAGE_EXTS)
    if odd:
        listing = ", ".join(f"{n} × {suffix}" for suffix, n in sorted(odd.items()))
        print(f"{images}: {sum(odd.values())} file(s) are not images and are not read ({listing})")
    return items


def require_pydensecrf(message: str) -> None:
    """Refuse a CRF option before any work when pydensecrf is missing (``message: import error``)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as e:
        raise UsageError(f"{message}: {e}") from None


def shard_from(text: str) -> tuple[int, int]:
    """``"i/N"`` → (i, N) with 0 <= i < N (ValueError otherwise)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard must be i/N with 0 <= i < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def arg_type(parse: Callable[[str], Any], prefix: str = "") -> Callable[[str], Any]:
    """An argparse ``type`` from a parser that raises ValueError (its message, after ``prefix``, is the error)."""

    def f(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{prefix}{e}") from None

    return f


def shard_items(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Every ``count``-th item starting at ``index`` (interleaved: balanced when image sizes vary along the list)."""
    return list(items[index::count])


@dataclass
class Outputs:
    out: Path
    save_probs: bool
    probs_dtype: str = "float16"
    record: str = "settings.json"

    def mask(self, name: str) -> Path:
        return self.out / f"{name}.png"

    def probs(self, name: str) -> Path:
        return self.out / "probs" / f"{name}.npy"

    def overlay(self, name: str) -> Path:
        return self.out / "overlays" / f"{name}.png"

    def finished(self, name: str) -> bool:
        return self.mask(name).is_file() and (not self.save_probs or self.probs(name).is_file())

    def remove_stale_temporaries(self, names: Sequence[str]) -> None:
        """Delete leftover atomic-write temporaries of ``names`` (from a killed run); other shards' are untouched."""
        mine = {p for n in names for p in (self.mask(n), self.probs(n), self.overlay(n))}
        for d in {p.parent for p in mine if p.parent.is_dir()}:
            for entry in d.iterdir():
                m = _TMP_RE.match(entry.name)
                if m and d / m.group("orig") in mine:
                    entry.unlink(missing_ok=True)

    def write(
        self, name: str, image: np.ndarray, mask: np.ndarray, probs: np.ndarray | None, palette: bool, overlay: bool
    ) -> None:
        """The atomic writes of one image: probs (with ``save_probs``), overlay, and last the mask (= finished)."""
        if self.save_probs and probs is not None:
            with atomic_path(self.probs(name)) as tmp, open(tmp, "wb") as f:
                np.save(f, probs.astype(self.probs_dtype, copy=False))
        if overlay:  # image | palette mask | palette colours blended over the image where not 0 (255 included)
            gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
            panels = [image, gap, palette_blend(None, mask), gap, palette_blend(image, mask, 0.5)]
            with atomic_path(self.overlay(name)) as tmp:
                Image.fromarray(np.concatenate(panels, axis=1)).save(tmp, format="PNG")
        save_mask_png(self.mask(name), mask, palette=palette)


def overlay_names(items: Sequence[Item], n: int) -> set[str]:
    """``n`` names spread evenly over the whole (unsharded) list: the same sample whatever the sharding."""
    if n <= 0 or not items:
        return set()
    idx = np.unique(np.linspace(0, len(items) - 1, num=min(n, len(items))).round().astype(int))
    return {items[i].name for i in idx}


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line (a failure reason in a failures file or a summary)."""
    return " ".join(f"{type(e).__name__}: {e}".split())


class BatchJob(contextlib.AbstractContextManager["BatchJob"]):
    """Decoding threads prefetch images, the caller computes, writing threads write; failures are recorded with a
    reason, while a fatal :class:`~weakclip.errors.OutputError` or a lost output lock stops the run at once."""

    def __init__(
        self, total: int, workers: int, desc: str, show_progress: bool, depth: int, lock: FolderLock | None
    ) -> None:
        from weakclip.progress import progress

        self.lock = lock  # checked every few images: a lost output lock stops the run
        self.decode_pool, self.write_pool = _pool(workers, "decode"), _pool(workers, "write")
        self.writes: collections.deque = collections.deque()
        self.depth = depth  # images decoded ahead, and writes pending at most
        self.failures: list[tuple[str, str]] = []
        self.done = 0
        self.in_row = 0  # compute failures since the last success
        self.bar = progress(
            total=total, desc=desc, unit="img", disable=not show_progress, dynamic_ncols=True, mininterval=1.0
        )

    def chunks(self, items: Sequence[Item], size: int) -> Iterator[list[tuple[Item, np.ndarray]]]:
        """Lists of up to ``size`` images decoded ``depth`` ahead; unreadable ones are recorded as failures."""
        submitted = ((i, self.decode_pool.submit(read_image, i.path)) for i in items)  # submits when drawn
        pending = collections.deque(itertools.islice(submitted, self.depth))
        chunk: list[tuple[Item, np.ndarray]] = []
        while pending:
            item, fut = pending.popleft()
            pending.extend(itertools.islice(submitted, 1))
            try:
                chunk.append((item, fut.result()))
            except (OSError, ValueError) as e:
                self.fail(item, one_line(e))
                continue
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def fail(self, item: Item, reason: str) -> None:
        self.failures.append((item.name, reason))
        self.bar.update(1)

    def fail_compute(self, item: Item, reason: str, what: str, error: type[Exception]) -> None:
        """Record a failed computation; :data:`MAX_FAILURES_IN_ROW` of them in a row end the run with ``error``."""
        self.fail(item, reason)
        self.in_row += 1
        if self.in_row >= MAX_FAILURES_IN_ROW:
            raise error(f"{what} failed on {self.in_row} images in a row; last: {reason}") from None

    def write(self, item: Item, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a writing thread; a failure is recorded as ``what: reason``."""
        self.in_row = 0
        self.writes.append((item, what, self.write_pool.submit(fn, *args)))
        self.collect(self.depth)

    def collect(self, block_until: int = 0) -> None:
        """Wait until at most ``block_until`` writes are pending; finished ones are taken at once (fatal errors)."""
        while self.writes and (len(self.writes) > block_until or self.writes[0][2].done()):
            item, what, fut = self.writes.popleft()
            try:
                fut.result()
                self.done += 1
            except Exception as e:  # noqa: BLE001 - a failed write is recorded, the run goes on
                if isinstance(e, OutputError) and e.fatal:  # no later image could be written either: stop the run
                    for _, _, pending in self.writes:
                        pending.cancel()
                    e.args = (f"{e}; stopped after {self.done} image(s) written (a rerun resumes from there)",)
                    raise e
                self.failures.append((item.name, f"{what}: {one_line(e)}"))
            self.bar.update(1)
            if self.lock is not None and (self.done + len(self.failures)) % 16 == 0:
                self.lock.check()

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.decode_pool.shutdown(wait=True)
        self.write_pool.shutdown(wait=True)


def check_out_location(
    out: Path, images: str | os.PathLike, items: Sequence[Item], outputs: Outputs, protected: Mapping[str, Any]
) -> None:
    """The output folder may not hold the inputs, nor its own files overwrite ``protected`` ({option: input file})."""
    o = out.resolve()
    folders = {it.path.parent.resolve() for it in items}
    if Path(images).is_dir():
        folders.add(Path(images).resolve())
    for folder in sorted(folders):
        if folder == o or folder.is_relative_to(o):
            where = "is" if folder == o else "contains"
            raise UsageError(
                f"--out {out} {where} the input image folder {folder}: outputs would be written among (or over) "
                "the images; choose an output folder outside the inputs"
            )
    written = {(out / name).resolve() for name in (outputs.record, "failures.txt")}
    for option, given in protected.items():
        if given and Path(given).resolve() in written:
            raise UsageError(f"--out {out} would overwrite the {option} file {given}; choose another output folder")


def check_resume(out: Path, record: str, settings: Mapping[str, Any], finished: int, noun: str) -> None:
    """Refuse to add outputs to a folder whose ``finished`` ones were made with other settings."""
    try:
        recorded = json.loads((out / record).read_text())["settings"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{out}: holds {finished} of this run's {noun} but no readable {record} (made by another program or "
            "an older version); choose another --out, or --overwrite to redo them"
        ) from None
    if diff := [f"{k} {recorded.get(k)!r} → {v!r}" for k, v in settings.items() if recorded.get(k) != v]:
        raise UsageError(
            f"{out}: {finished} {noun} there were made with other settings ({'; '.join(diff)}); resuming would mix "
            "them: choose another --out, or --overwrite to redo them all"
        )


@dataclass(frozen=True)
class Summary:
    done: int
    skipped: int
    failures: tuple[tuple[str, str], ...]
    seconds: float
    failures_file: Path | None


def run_batch(
    tool: str,
    items: Sequence[Item],
    outputs: Outputs,
    settings: Mapping[str, Any],
    work: Callable[[list[Item], int, FolderLock], tuple[int, list[tuple[str, str]]]],
    *,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    noun: str = "outputs",
) -> Summary:
    """Run ``work(todo, skipped, lock) -> (done, failures)`` over this shard's unfinished ``items`` in an owned output
    folder; a run with failures raises :class:`RuntimeFailure` after the summary line."""
    t0 = time.perf_counter()
    env = os.environ  # no --shard: RANK/WORLD_SIZE (torchrun), else the whole list
    if shard is None:
        shard = shard_from(f"{env['RANK']}/{env['WORLD_SIZE']}") if "WORLD_SIZE" in env and "RANK" in env else (0, 1)
    shard_i, shard_n = shard
    mine = shard_items(items, shard_i, shard_n)
    out = outputs.out
    fail_name = "failures.txt" if shard_n == 1 else f"failures-{shard_i}-of-{shard_n}.txt"
    fail_path = out / fail_name
    done, failures = 0, list[tuple[str, str]]()  # failures: (name, reason)
    with owned_output_folder(out, tool, own_files=(outputs.record, fail_name), shard=(shard_i, shard_n)) as lock:
        todo = [it for it in mine if overwrite or not outputs.finished(it.name)]  # one look at the folder per image
        if len(todo) < len(mine):
            check_resume(out, outputs.record, settings, len(mine) - len(todo), noun)
        outputs.remove_stale_temporaries([it.name for it in mine])
        skipped = len(mine) - len(todo)
        if todo:
            done, failures = work(todo, skipped, lock)
        if failures:
            write_text_atomic(fail_path, "".join(f"{name}\t{reason}\n" for name, reason in sorted(failures)))
        elif fail_path.exists():
            fail_path.unlink()  # all earlier failures have been retried successfully (or are finished)
    summary = Summary(done, skipped, tuple(failures), time.perf_counter() - t0, fail_path if failures else None)
    note = f" (shard {shard_i}/{shard_n})" if shard_n > 1 else ""
    print(
        f"summary{note}: {done} images done, {skipped} skipped (already finished), {len(failures)} failed, "
        f"{done / max(summary.seconds, 1e-9):.2f} images/s ({summary.seconds:.1f} s)"
    )
    if failures:
        raise RuntimeFailure(f"{len(failures)} image(s) failed; names and reasons in {fail_path}")
    return summary


def write_record(outputs: Outputs, settings: Mapping[str, Any], **extra: Any) -> None:
    """The settings record (``{"settings": …, **extra}``) a resume is checked against."""
    record = json.dumps({"settings": settings, **extra}, indent=2, default=str)
    write_text_atomic(outputs.out / outputs.record, record + "\n")
