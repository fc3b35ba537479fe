"""One convention for every command-line tool: a mistake is one line on stderr and a fixed exit status.

* :class:`UsageError` — the command line or an input file is wrong (missing file, wrong kind of file, bad option
  value).  Printed as ``error: <message>``, exit status **2**.  Raise it *before* any slow work.
* :class:`RuntimeFailure` — the work itself failed (some images could not be processed, an export check failed).
  Printed as ``error: <message>``, exit status **1**.

Messages name the file and say what was expected and which command takes it, e.g.
``runs/x/weakclip.onnx: this is an ONNX model; generation takes it with --engine onnxruntime (or auto)``.

:func:`cli` wraps a ``main(argv) -> int`` so that these exceptions (and argparse's own usage errors, which already
exit 2) become the one line and the status, with no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A wrong command line or input file: one line, exit status 2."""


class RuntimeFailure(Exception):
    """The work failed (after the inputs were accepted): one line, exit status 1."""


MainFn = Callable[[Sequence[str] | None], int]


def cli(fn: MainFn) -> MainFn:
    """Decorate a tool's ``main``: UsageError → 2, RuntimeFailure → 1, each as one ``error:`` line on stderr."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return fn(argv)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except RuntimeFailure as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILURE

    return wrapper
