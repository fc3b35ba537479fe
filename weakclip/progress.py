"""Progress and start-up output shared by every command-line tool.

Progress
--------
A long loop shows a tqdm bar when its output is a terminal and, when it is not (a log file, a batch job), one plain
line every N seconds (default 30) with items done / total, items/s and the ETA::

    [generate] 120/500 img (24.0 %), 3.21 img/s, elapsed 37 s, ETA 1 min 58 s, loss=0.412
    [generate] done: 500/500 img in 2 min 36 s (3.20 img/s)

:func:`progress` has tqdm's names (iterable wrapper, ``update``, ``set_postfix``, ``write``, ``close``, context
manager), so adopting it is replacing ``tqdm(`` by ``progress(``.  Beyond tqdm:

* unknown totals print counts and rates without ETA;
* ``mode``: ``"auto"`` (default: ``"bar"`` when ``file`` is a terminal, else ``"lines"``), ``"bar"``, ``"lines"`` or
  ``"off"``; environment ``WEAKCLIP_PROGRESS``.  ``disable=True`` is ``"off"`` (the count is still kept in ``.n``);
* ``interval``: seconds between lines in ``"lines"`` mode; environment ``WEAKCLIP_PROGRESS_INTERVAL``, default 30;
* the bar / lines go to ``sys.stderr`` (like tqdm), ``.write(msg)`` to ``sys.stdout``; extra keyword arguments go to
  tqdm in bar mode and are ignored otherwise;
* in lines mode ``close()`` prints the final ``done`` line only when at least one periodic line was printed: a run
  shorter than the interval stays silent (the tool's own summary says the rest).

:func:`add_progress_arguments` adds ``--progress-mode`` and ``--progress-interval`` to a tool's parser;
:func:`progress_options` turns the parsed values into ``progress(...)`` keyword arguments.

Start-up line
-------------
Every tool that runs a model prints one line before the work starts, in one format (:func:`startup_line`,
:func:`print_startup`; fields given as ``None`` are left out, ``threads`` defaults to torch's intra-op threads)::

    weakclip generate: engine onnxruntime, model runs/syn/onnx/weakclip.onnx, precision fp32, views 1 (scale 1),
    device cpu, threads 2; 6 image(s) to do, 0 already finished

Logging
-------
Library code logs through ``logging.getLogger("weakclip.<module>")`` and never configures handlers.
:func:`setup_logging` (the one handler: INFO lines on stdout as they are, warnings and errors on stderr as
``warning: ...`` / ``error: ...``) is called by the command-line entry (``weakclip`` and its aliases), and by
``train`` and ``export`` for their own logger (``weakclip.training``, ``weakclip.export``) so that their progress
lines show when they run as scripts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = [
    "DEFAULT_INTERVAL",
    "Progress",
    "add_progress_arguments",
    "format_duration",
    "print_startup",
    "progress",
    "progress_options",
    "setup_logging",
    "startup_line",
]

DEFAULT_INTERVAL = 30.0
MODES = ("auto", "bar", "lines", "off")
ENV_MODE = "WEAKCLIP_PROGRESS"
ENV_INTERVAL = "WEAKCLIP_PROGRESS_INTERVAL"

_now = time.monotonic  # the clock (tests replace it)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``?`` for unknown (NaN / infinite / negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _env_interval() -> float:
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        logging.getLogger("weakclip.progress").warning(
            f"{ENV_INTERVAL}={raw!r} is not a number of seconds ≥ 0; using {DEFAULT_INTERVAL:g}"
        )
        return DEFAULT_INTERVAL
    return value


def _resolve_mode(mode: str | None, file: IO[str]) -> str:
    mode = (mode or os.environ.get(ENV_MODE, "") or "auto").strip().lower()
    if mode not in MODES:
        logging.getLogger("weakclip.progress").warning(
            f"progress mode {mode!r} is not one of {', '.join(MODES)}; using auto"
        )
        mode = "auto"
    if mode == "auto":
        try:
            mode = "bar" if file.isatty() else "lines"
        except (AttributeError, ValueError):  # no isatty / closed stream
            mode = "lines"
    if mode == "bar":
        try:
            import tqdm  # noqa: F401
        except ImportError:
            mode = "lines"
    return mode


class Progress:
    """A tqdm bar on a terminal, periodic plain lines otherwise (see the module docstring)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        disable: bool = False,
        interval: float | None = None,
        mode: str | None = None,
        file: IO[str] | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.file = file if file is not None else sys.stderr
        self.interval = _env_interval() if interval is None else float(interval)
        self.mode = "off" if disable else _resolve_mode(mode, self.file)
        self.postfix = ""
        self.closed = False
        self.lines_printed = 0
        self._start = self._last = _now()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            kw = {"dynamic_ncols": True, "mininterval": 1.0, **tqdm_kwargs}
            self._bar = tqdm(total=total, desc=desc or None, unit=unit, initial=initial, file=self.file, **kw)

    # -- tqdm-compatible surface ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress(total=...) without an iterable is not iterable; call .update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress without a total has no len()")
        return int(self.total)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and not self.closed:
            now = _now()
            if now - self._last >= self.interval:
                self._last = now
                self.lines_printed += 1
                self._print(self.line(now))

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        items = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if self._bar is not None:
            self._bar.set_postfix(items, refresh=refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=refresh)

    def write(self, msg: str, file: IO[str] | None = None) -> None:
        """Print ``msg`` (on stdout by default) without breaking a bar."""
        if self._bar is not None:
            self._bar.write(msg, file=file)
        else:
            print(msg, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.lines_printed:
            self._print(self.done_line(_now()))

    # -- the plain lines -----------------------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Items per second since the start (``initial`` items excluded)."""
        elapsed = _now() - self._start
        return (self.n - self.initial) / elapsed if elapsed > 0 else float("nan")

    def _fmt(self, x: float) -> str:
        return f"{x:g}" if isinstance(x, float) and not x.is_integer() else f"{int(x)}"

    def line(self, now: float | None = None) -> str:
        """The periodic line: ``[desc] n/total unit (pct %), rate unit/s, elapsed E, ETA T, postfix``."""
        now = _now() if now is None else now
        elapsed = now - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else float("nan")
        head = f"[{self.desc}] " if self.desc else ""
        if self.total:
            count = f"{self._fmt(self.n)}/{self._fmt(self.total)} {self.unit} ({100 * self.n / self.total:.1f} %)"
        else:
            count = f"{self._fmt(self.n)} {self.unit}"
        parts = [count, f"{rate:.2f} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"]
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            parts.append(f"ETA {format_duration(eta)}")
        if self.postfix:
            parts.append(self.postfix)
        return head + ", ".join(parts)

    def done_line(self, now: float | None = None) -> str:
        now = _now() if now is None else now
        elapsed = now - self._start
        done = self.n - self.initial
        rate = f"{done / elapsed:.2f} {self.unit}/s" if elapsed > 0 else f"? {self.unit}/s"
        head = f"[{self.desc}] " if self.desc else ""
        count = f"{self._fmt(self.n)}/{self._fmt(self.total)}" if self.total else self._fmt(self.n)
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{head}done: {count} {self.unit} in {format_duration(elapsed)} ({rate}){tail}"

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.file, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            pass


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Progress:
    """``Progress(iterable, **kwargs)``: see the module docstring."""
    return Progress(iterable, **kwargs)


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress-mode {auto,bar,lines,off}`` and ``--progress-interval SECONDS`` (defaults from the environment)."""
    g = parser.add_argument_group("progress output")
    g.add_argument(
        "--progress-mode",
        choices=MODES,
        default=None,
        help=f"bar on a terminal, periodic lines in a log file (auto; ${ENV_MODE})",
    )
    g.add_argument(
        "--progress-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"seconds between progress lines when not on a terminal (default ${ENV_INTERVAL} or {DEFAULT_INTERVAL:g})",
    )


def progress_options(args: argparse.Namespace) -> dict[str, Any]:
    """``progress(...)`` keyword arguments from :func:`add_progress_arguments`' values (absent ones left out)."""
    out: dict[str, Any] = {}
    if getattr(args, "progress_mode", None):
        out["mode"] = args.progress_mode
    if getattr(args, "progress_interval", None) is not None:
        out["interval"] = args.progress_interval
    return out


# ---------------------------------------------------------------------------------------------------------------
# the start-up line


def startup_line(
    tool: str,
    *,
    engine: str | None = None,
    model: str | os.PathLike[str] | None = None,
    precision: str | None = None,
    views: str | int | None = None,
    device: str | None = None,
    threads: int | None = None,
    note: str | None = None,
    **extra: Any,
) -> str:
    """``weakclip <tool>: engine E, model M, precision P, views V, device D, threads T[, key value ...][; note]``."""
    if threads is None and "torch" in sys.modules:
        try:
            threads = sys.modules["torch"].get_num_threads()
        except Exception:  # noqa: BLE001 - a half-imported torch: leave the field out
            threads = None
    fields: list[tuple[str, Any]] = [
        ("engine", engine),
        ("model", os.fspath(model) if model is not None else None),
        ("precision", precision),
        ("views", views),
        ("device", device),
        ("threads", threads),
        *extra.items(),
    ]
    body = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields if v is not None)
    name = tool if tool.startswith("weakclip") else f"weakclip {tool}"
    return f"{name}: {body}" + (f"; {note}" if note else "")


def print_startup(tool: str, **fields: Any) -> str:
    """Print :func:`startup_line` on stdout (flushed) and return it."""
    text = startup_line(tool, **fields)
    print(text, flush=True)
    return text


# ---------------------------------------------------------------------------------------------------------------
# logging (command-line entries only)


class _Stream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at emit time (pytest's capture, redirections)."""

    def __init__(self, which: str, below: int | None = None) -> None:
        self._which, self._below = which, below
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        return (self._below is None or record.levelno < self._below) and super().filter(record)


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(level: int = logging.INFO, logger: str = "weakclip") -> logging.Logger:
    """The default handler of the command-line entry: ``logger``'s records below WARNING on stdout as they are,
    WARNING and above on stderr as ``warning: ...``.  Idempotent; loggers with their own handlers and
    ``propagate=False`` (a tool's own set-up) are left alone."""
    lg = logging.getLogger(logger)
    if not any(isinstance(h, _Stream) for h in lg.handlers):
        out, err = _Stream("stdout", below=logging.WARNING), _Stream("stderr")
        err.setLevel(logging.WARNING)
        out.setFormatter(_LevelPrefix("%(message)s"))
        err.setFormatter(_LevelPrefix("%(message)s"))
        lg.addHandler(out)
        lg.addHandler(err)
    lg.setLevel(level)
    lg.propagate = False
    return lg
