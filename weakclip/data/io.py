"""File helpers: image decoding, palette PNGs, atomic writes (following the umask like ``open()``), folder locks."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from weakclip.errors import FATAL_ERRNOS, LockHeld, OutputError, RuntimeFailure

# Suffixes OpenCV decodes that image folders may hold (everything else in a folder is reported, not read).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm", ".pnm")


def _read_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(old)
    return old


def voc_palette(n: int = 256) -> list[int]:
    """The standard PASCAL VOC colour map as a flat [r, g, b, ...] list of length 3·n (index 255 is (224, 224, 192))."""
    # bit 3j + ch of the class index i goes to bit 7 - j of channel ch
    return [sum(((i >> (3 * j + ch)) & 1) << (7 - j) for j in range(8)) for i in range(n) for ch in range(3)]


def voc_palette_array() -> np.ndarray:
    """The VOC colour map as a (256, 3) uint8 array (index = class, 255 = unknown)."""
    return np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def palette_blend(image: np.ndarray | None, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8: the mask's palette colours over ``image`` where not background (0); alone without image."""
    colour = voc_palette_array()[mask]
    if image is None:
        return colour
    out = image.astype(np.float32)
    fg = mask != 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, :func:`commit_file`'d onto it when the block succeeds (never half-written);
    an unwritable output raises :class:`~weakclip.errors.OutputError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise output_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        commit_file(tmp_path, path)
    except Exception as e:  # writers in other languages (safetensors) report the OS error in their message
        m = re.search(r"\(os error (\d+)\)", str(e))
        err = e if isinstance(e, OSError) else OSError(int(m[1]), os.strerror(int(m[1]))) if m else None
        if err is not None and err.errno in FATAL_ERRNOS:
            raise OutputError(path, err) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync the finished temporary ``tmp``, give it the mode ``open()`` would and rename it onto ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # the data is on disk before the name points at it
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_read_umask())  # mkstemp creates 0600; the result follows the umask like open() would
    os.replace(tmp, path)


def output_error(path: str | os.PathLike, e: OSError) -> OSError | OutputError:
    """``e`` as an OutputError naming ``path`` when the output cannot be written (disk full, read-only...), else ``e``."""
    return OutputError(path, e) if e.errno in FATAL_ERRNOS else e


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and prove a file can be written there, so a read-only or full output fails before slow work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise output_error(folder, e) from e
    return folder


def file_sha256(path: str | os.PathLike, *, with_data: bool = True) -> str:
    """sha256 (hex) of a file, plus its ``<file>.data`` external-weights sibling (large ONNX models) if ``with_data``."""
    h = hashlib.sha256()
    for p in (Path(path), Path(f"{path}.data") if with_data else None):
        if p is not None and p.is_file():
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: bool = True) -> None:
    """Write an (H, W) uint8 label mask atomically as a PNG (palette mode with the VOC colours, or plain L)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D (H, W), got shape {mask.shape}")
    img = Image.fromarray(mask.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """The block's errors as one line naming ``path``: ``file not found``, or ValueError ``<what> (<error>)``."""
    try:
        yield
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {what} ({e})") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette indices or L) as an (H, W) uint8 array; a clear error names the file otherwise."""
    with reading(path, "cannot read label mask"), Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"mode {img.mode} is not a label image (expected palette or grayscale)")
        return np.asarray(img, dtype=np.uint8) if img.mode in ("P", "L") else np.asarray(img).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB decoded exactly like the official mmcv pipeline (``cv2.imdecode``, ``IMREAD_COLOR``)."""
    import cv2

    with reading(path, "cannot read image"):
        if os.path.getsize(path) == 0:
            raise ValueError("file is empty (0 bytes)")
        data = np.fromfile(path, dtype=np.uint8)
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        # libjpeg decodes a cut-off JPEG with a warning and grey rows: refuse it rather than make a mask of it.
        raise ValueError(f"{path}: cannot decode image (truncated JPEG: no end-of-image marker)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode image (not an image OpenCV reads, or corrupt/truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@contextlib.contextmanager
def removed_if_left_empty(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``path``; if the block fails, remove the folders it created that are still empty (``path`` and its new
    parents, or its new entries with the empty folders below them).  Old folders and files are never touched."""
    path = Path(path)
    # ``path`` and the parents missing now, the outermost last
    missing = list(itertools.takewhile(lambda p: not (p.exists() or p.is_symlink()), (path, *path.parents)))
    before: set[str] | None = None
    if not missing:
        with contextlib.suppress(OSError):
            before = set(os.listdir(path))
    try:
        yield path
    except BaseException:
        roots = missing[-1:]
        if before is not None:
            with contextlib.suppress(OSError):
                roots = [path / name for name in sorted(set(os.listdir(path)) - before)]
        for root in roots:
            if root.is_dir() and not root.is_symlink():
                for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):  # deepest first
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)  # fails (kept) when something is inside
        raise


class FolderLock:
    """An output folder owned through ``fcntl.flock`` (the OS releases it when the process dies): ``.weakclip.lock``
    exclusive, or shared by the shards of one run, each also holding ``.weakclip-<i>-of-<N>.lock`` (PID and tool)."""

    def __init__(self, folder: str | os.PathLike, tool: str, shard: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        self._held: list[tuple[Path, int, int, bool]] = []  # (path, fd, inode, exclusive)
        i, n = shard or (0, 1)
        who = f"{os.getpid()} {tool}" + (f" --shard {i}/{n}" if n > 1 else "")
        try:
            self._take(self.folder / ".weakclip.lock", exclusive=n == 1, who=who if n == 1 else None)
            if n != 1:
                self._take(self.folder / f".weakclip-{i}-of-{n}.lock", exclusive=True, who=who)
        except BaseException:
            self.release()
            raise

    def _holders(self) -> str:
        found = []
        for p in sorted(self.folder.glob(".weakclip*.lock")):
            with contextlib.suppress(OSError):
                if text := p.read_text("utf-8", "replace").split():
                    found.append(f"PID {text[0]} ({' '.join(text[1:])})")
        return ", ".join(found) or "another process"

    def _take(self, path: Path, exclusive: bool, who: str | None) -> None:
        import fcntl

        try:
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_read_umask())
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise LockHeld(
                        f"{self.folder}: another run owns this output folder: {self._holders()}; wait for it to "
                        "finish, or use another output folder (the shards of one run share a folder with --shard i/N)"
                    ) from None
                if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # locked the file that is (still) there, not one its last holder just removed
                os.close(fd)
            self._held.append((path, fd, os.fstat(fd).st_ino, exclusive))
            if who is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{who}\n".encode(), 0)
        except OSError as e:
            raise output_error(path, e) from e

    def check(self) -> None:
        """Raise if a lock file was removed or replaced (the folder deleted or taken over): stop writing."""
        for path, _, ino, _ in self._held:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ino:
                    continue
            raise RuntimeFailure(f"{self.folder}: output lock lost ({path} removed or replaced); stopped")

    def release(self) -> None:
        """Give the folder back: lock files this run alone holds are removed, then the locks are released."""
        import fcntl

        for path, fd, ino, exclusive in reversed(self._held):
            with contextlib.suppress(OSError):
                if not exclusive:  # the last shard out removes the shared file
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == ino:
                    path.unlink()
            os.close(fd)  # closing the descriptor releases the flock
        self._held.clear()


@contextlib.contextmanager
def owned_output_folder(
    folder: str | os.PathLike, tool: str, own_files: Sequence[str] = (), shard: tuple[int, int] | None = None
) -> Iterator[FolderLock]:
    """Create and own ``folder`` for the block (:class:`FolderLock`); a failed run leaves it as found (new ``own_files``
    removed when nothing else was written, new empty folders removed)."""
    folder = Path(folder)
    before = set(os.listdir(folder)) if folder.is_dir() else None
    with removed_if_left_empty(folder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(folder, e) from e
        lock = FolderLock(folder, tool, shard)
        try:
            yield lock
        except BaseException:
            new = {n for n in set(os.listdir(folder)) - (before or set()) if not n.startswith(".weakclip")}
            if new and new <= set(own_files):
                for name in new:
                    with contextlib.suppress(OSError):
                        (folder / name).unlink()
            raise
        finally:
            lock.release()
