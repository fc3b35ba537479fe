"""The one error boundary of every command: a failure is one ``error:`` line on stderr and a fixed exit status.

Exit statuses: 0 done, 1 the work failed (:class:`RuntimeFailure`, an unexpected error), 2 a usage error
(:class:`UsageError`: the command line or an input file is wrong; raise it before any slow work), 130 interrupted.
No traceback unless ``--debug`` or ``WEAKCLIP_DEBUG=1``.  Where the failing file lies under a path given on the
command line, the line names that option (``--out runs/x: …``).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno as errno_
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Optional dependencies (top-level import name → the extra that installs it), for the one-line message.
OPTIONAL_MODULES = {
    **dict.fromkeys(("yaml", "pydensecrf"), "train"),
    **dict.fromkeys(("onnx", "onnxruntime", "onnxscript", "onnxslim", "onnxconverter_common"), "export"),
    "matplotlib": "viz",
    "tensorrt": "tensorrt",
}

_REASONS = {
    errno_.ENOSPC: "disk full (no space left on device)",
    errno_.EDQUOT: "disk quota exceeded",
    errno_.EROFS: "read-only file system",
    errno_.EACCES: "permission denied",
    errno_.EPERM: "operation not permitted",
    errno_.EFBIG: "file too large for this file system",
    errno_.EIO: "input/output error",
    errno_.ENOENT: "no such file or directory",
    errno_.EISDIR: "is a directory, not a file",
    errno_.ENOTDIR: "a path component is not a directory",
}
# errno values after which no later item of a batch can succeed (all but the input-side ones): the batch stops.
FATAL_ERRNOS = frozenset(_REASONS) - {errno_.ENOENT, errno_.EISDIR, errno_.ENOTDIR}

# the prog name of the command being run: a tool called inside another (demo → train) reports as the outer one
current_prog: contextvars.ContextVar[str | None] = contextvars.ContextVar("weakclip_prog", default=None)


class WeakclipError(Exception):
    """Base of the project's errors: ``str()`` is the one line (without ``error:``)."""

    exit_status = EXIT_FAILURE


class UsageError(WeakclipError):
    """A wrong command line or input file: one line, exit status 2."""

    exit_status = EXIT_USAGE


class RuntimeFailure(WeakclipError):
    """The work failed (after the inputs were accepted): one line, exit status 1."""


class OutputError(RuntimeFailure):
    """An output file could not be written; ``fatal`` when no later file of the run can be (disk full, read-only)."""

    def __init__(self, path: str | os.PathLike, err: OSError) -> None:
        self.path = Path(path)
        self.errno = err.errno
        reason = _REASONS.get(err.errno or -1) or (err.strerror or str(err))
        super().__init__(f"cannot write {self.path}: {reason}")

    @property
    def fatal(self) -> bool:
        return self.errno in FATAL_ERRNOS


class LockHeld(RuntimeFailure):
    """Another process owns the output folder."""


class MissingDependency(RuntimeFailure):
    """An optional package is not installed (the message names the pip command)."""


class WeightsUnavailable(RuntimeFailure):
    """Pretrained weights cannot be obtained (offline, no cache) or read."""


def missing_dependency(err: ModuleNotFoundError, what: str) -> MissingDependency | None:
    """The one-line error for an optional module ``err.name`` needed by ``what``; None if it is not optional."""
    extra = OPTIONAL_MODULES.get((err.name or "").split(".")[0])
    if extra is None:
        return None
    return MissingDependency(f"{what} needs the '{err.name}' module: pip install 'weakclip[{extra}]'")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise :class:`UsageError` (one line) instead of printing the usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _given_paths(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(how to name it, value) for every argument that may be a path: ``--opt value`` / ``--opt=value`` → ``"--opt
    value"``, a ``key=value`` override → ``"key=value"``, a positional → its value."""
    out: list[tuple[str, str]] = []
    prev: str | None = None
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, _, v = a.partition("=")
            out.append((f"{k} {v}", v))
            prev = None
        elif a.startswith("-") and len(a) > 1 and not a[1].isdigit():
            prev = a
        else:
            key, eq, v = a.partition("=")
            if eq and key.replace(".", "_").isidentifier():
                out.append((a, v))
            out.append((f"{prev} {a}" if prev else a, a))
            prev = None
    return out


def option_for(path: str | os.PathLike, argv: Sequence[str]) -> str | None:
    """How the command line named ``path`` or the folder holding it (``"--out runs/x"``, ``"work_dir=runs/x"``, a
    positional), the deepest match first; None if no argument names it."""
    try:
        target = Path(path).resolve()
    except (OSError, ValueError):
        return None
    best: tuple[int, str] | None = None
    for shown, value in _given_paths(argv):
        if not value or len(value) > 4096:
            continue
        try:
            p = Path(value).resolve()
        except (OSError, ValueError):
            continue
        if (target == p or target.is_relative_to(p)) and (best is None or len(p.parts) > best[0]):
            best = (len(p.parts), shown)
    return best[1] if best else None


def _prefixed(where: str | None, path: str | os.PathLike, message: str) -> str:
    """``"<where>: <message>"`` unless ``where`` is just the path the message already starts with."""
    return f"{where}: {message}" if where and where != str(path) else message


def _os_error_line(e: OSError, argv: Sequence[str]) -> tuple[str, int]:
    filename = e.filename if e.filename is not None else getattr(e, "path", None)
    reason = _REASONS.get(e.errno or -1) or (e.strerror or str(e))
    input_side = isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError)
    status = EXIT_USAGE if input_side else EXIT_FAILURE
    if filename is None:  # raised by our own code with the file in the message
        return (str(e) if e.args and not e.strerror else reason), status
    verb = "" if input_side else ("cannot write " if e.errno in FATAL_ERRNOS - {errno_.EIO} else "")
    return _prefixed(option_for(filename, argv), filename, f"{verb}{filename}: {reason}"), status


def _prog_of(fn: Callable[..., Any]) -> str:
    if prog := current_prog.get():
        return prog
    module = fn.__module__
    if module == "__main__":  # python -m weakclip.cli.x: the module's real name is on its spec
        module = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", module)
    if module.startswith("weakclip.cli."):  # the command modules are named after their subcommands
        return f"weakclip {module.rsplit('.', 1)[-1].replace('_', '-')}"
    if module.startswith("weakclip.") and module.rsplit(".", 1)[-1] in ("train", "to_onnx"):
        return "weakclip train" if module.endswith("train") else "weakclip export"
    return f"python -m {module}"


def _debug(argv: list[str]) -> bool:
    on = os.environ.get("WEAKCLIP_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    while "--debug" in argv:
        argv.remove("--debug")
        on = True
    return on


MainFn = Callable[[Sequence[str] | None], int | None]


def run_command(fn: MainFn, argv: Sequence[str] | None, prog: str | None = None) -> int:
    """Run ``fn(argv)`` inside the boundary and return the exit status (never raises, except with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(args)
    prog = prog or _prog_of(fn)
    token = current_prog.set(prog)

    def line(message: str, status: int) -> int:
        if debug:
            traceback.print_exc()
        text = " ".join(str(message).split())  # one line, whatever the message held
        if status == EXIT_USAGE:
            text += f" (see {prog} --help)"
        print(f"error: {text}", file=sys.stderr)
        return status

    try:
        rc = fn(args)
        sys.stdout.flush()  # a closed pipe (`… | head -1`) fails here, inside the boundary, not at exit
        return EXIT_OK if rc is None else int(rc)
    except OutputError as e:
        return line(_prefixed(option_for(e.path, args), e.path, str(e)), e.exit_status)
    except WeakclipError as e:
        return line(str(e), e.exit_status)
    except KeyboardInterrupt:
        return line(f"{prog}: interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout → /dev/null: the final flush is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return line(f"{prog}: output closed before the end (broken pipe)", EXIT_FAILURE)
    except ModuleNotFoundError as e:
        dep = missing_dependency(e, prog)
        if dep is None:
            if debug:
                raise
            return line(f"{prog}: unexpected error: {type(e).__name__}: {e} (WEAKCLIP_DEBUG=1 shows where)", 1)
        return line(str(dep), dep.exit_status)
    except OSError as e:
        return line(*_os_error_line(e, args))
    except MemoryError:
        return line(f"{prog}: out of memory", EXIT_FAILURE)
    except SystemExit as e:  # argparse --help / --version, or a tool's sys.exit
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else line(str(e.code), 1))
    except Exception as e:  # noqa: BLE001 - the boundary: one line instead of a traceback
        if debug:
            raise
        return line(
            f"{prog}: unexpected error: {type(e).__name__}: {e} (WEAKCLIP_DEBUG=1 or --debug shows the traceback)",
            EXIT_FAILURE,
        )
    finally:
        current_prog.reset(token)


def cli(fn: MainFn) -> Callable[..., int]:
    """Decorate a tool's ``main(argv)`` (``main()`` reads ``sys.argv``) to run inside :func:`run_command`."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        return run_command(fn, argv)

    return wrapper
