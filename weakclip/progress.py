"""Progress, start-up line and logging of the command-line tools: :func:`progress` is a drop-in for ``tqdm(`` that
prints plain lines every ``interval`` seconds (and a final ``done`` line) when not on a terminal."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

DEFAULT_INTERVAL = 30.0
MODES = ("auto", "bar", "lines", "off")
ENV_MODE = "WEAKCLIP_PROGRESS"
ENV_INTERVAL = "WEAKCLIP_PROGRESS_INTERVAL"

_now = time.monotonic  # the clock (tests replace it)
_log = logging.getLogger("weakclip.progress")


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
    with contextlib.suppress(ValueError):
        if (value := float(raw or DEFAULT_INTERVAL)) >= 0:
            return value
    _log.warning(f"{ENV_INTERVAL}={raw!r} is not a number of seconds ≥ 0; using {DEFAULT_INTERVAL:g}")
    return DEFAULT_INTERVAL


def _resolve_mode(mode: str | None, file: IO[str]) -> str:
    mode = (mode or os.environ.get(ENV_MODE, "") or "auto").strip().lower()
    if mode not in MODES:
        _log.warning(f"progress mode {mode!r} is not one of {', '.join(MODES)}; using auto")
        mode = "auto"
    if mode == "auto":
        try:
            mode = "bar" if file.isatty() else "lines"
        except (AttributeError, ValueError):  # no isatty / closed stream
            mode = "lines"
    return "lines" if mode == "bar" and importlib.util.find_spec("tqdm") is None else mode


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) and not x.is_integer() else f"{int(x)}"


class Progress(contextlib.AbstractContextManager["Progress"]):
    """A tqdm bar on a terminal, periodic plain lines otherwise; extra keyword arguments go to tqdm."""

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
            with contextlib.suppress(TypeError):  # an iterable without len(): no total
                total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.initial = self.n = initial
        self.file = file if file is not None else sys.stderr
        self.interval = _env_interval() if interval is None else float(interval)
        self.mode = "off" if disable else _resolve_mode(mode, self.file)
        self.postfix, self.closed, self.lines_printed = "", False, 0
        self._start = self._last = _now()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            kw = {"dynamic_ncols": True, "mininterval": 1.0, **tqdm_kwargs}
            self._bar = tqdm(total=total, desc=desc or None, unit=unit, initial=initial, file=self.file, **kw)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress(total=...) without an iterable is not iterable; call .update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

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
            self._print(self.line(_now(), final=True))

    def line(self, now: float | None = None, final: bool = False) -> str:
        """``[desc] n/total unit (pct %), rate unit/s, elapsed E, ETA T, postfix``, or the ``done`` line."""
        elapsed = (_now() if now is None else now) - self._start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else float("nan")
        speed = f"{rate:.2f} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        count = f"{_fmt(self.n)}/{_fmt(self.total)}" if self.total else _fmt(self.n)
        head = f"[{self.desc}] " if self.desc else ""
        post = [self.postfix] if self.postfix else []
        if final:
            return head + ", ".join([f"done: {count} {self.unit} in {format_duration(elapsed)} ({speed})", *post])
        parts = [f"{count} {self.unit}", speed, f"elapsed {format_duration(elapsed)}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.1f} %)"
            parts.append(f"ETA {format_duration((self.total - self.n) / rate if rate > 0 else math.nan)}")
        return head + ", ".join(parts + post)

    def _print(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream must not stop the work
            print(text, file=self.file, flush=True)


progress = Progress  # the tqdm-like name


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress-mode`` and ``--progress-interval`` (defaults from the environment)."""
    g = parser.add_argument_group("progress output")
    mode_help = f"bar on a terminal, periodic lines in a log file (auto; ${ENV_MODE})"
    g.add_argument("--progress-mode", choices=MODES, help=mode_help)
    every = f"seconds between progress lines when not on a terminal (default ${ENV_INTERVAL} or {DEFAULT_INTERVAL:g})"
    g.add_argument("--progress-interval", type=float, metavar="SECONDS", help=every)


def progress_options(args: argparse.Namespace) -> dict[str, Any]:
    """``progress(...)`` keyword arguments from :func:`add_progress_arguments`' values (absent ones left out)."""
    return {k: v for k in ("mode", "interval") if (v := getattr(args, f"progress_{k}", None)) is not None}


STARTUP_FIELDS = ("engine", "model", "precision", "views", "device", "threads")  # first, in this order


def startup_line(tool: str, *, note: str | None = None, **fields: Any) -> str:
    """``weakclip <tool>: engine E, model M, ..., threads T[, key value ...][; note]``, None fields left out."""
    fields = {k: fields.get(k) for k in STARTUP_FIELDS} | fields
    if fields["threads"] is None and "torch" in sys.modules:
        with contextlib.suppress(Exception):  # a half-imported torch: leave the field out
            fields["threads"] = sys.modules["torch"].get_num_threads()
    body = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items() if v is not None)
    name = tool if tool.startswith("weakclip") else f"weakclip {tool}"
    return f"{name}: {body}" + (f"; {note}" if note else "")


def print_startup(tool: str, **fields: Any) -> str:
    print(text := startup_line(tool, **fields), flush=True)
    return text


class _Stream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at emit time (pytest's capture, redirections)."""

    def __init__(self, which: str) -> None:
        self._which = which
        super().__init__()

    # StreamHandler.__init__ assigns the stream: ignored
    stream = property(lambda self: getattr(sys, self._which), lambda self, value: None)


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(level: int = logging.INFO, logger: str = "weakclip") -> logging.Logger:
    """``logger``'s records below WARNING on stdout, the others on stderr as ``warning: ...`` (idempotent)."""
    lg = logging.getLogger(logger)
    if not any(isinstance(h, _Stream) for h in lg.handlers):
        out, err = _Stream("stdout"), _Stream("stderr")
        out.addFilter(lambda record: record.levelno < logging.WARNING)
        err.setLevel(logging.WARNING)
        for h in (out, err):
            h.setFormatter(_LevelPrefix("%(message)s"))
            lg.addHandler(h)
    lg.setLevel(level)
    lg.propagate = False
    return lg
