"""What the 'nothing changed or was left half-written' checks of the command tests compare."""

from __future__ import annotations

from pathlib import Path


def listing(folder: Path, *, folders: bool = True) -> dict[str, tuple[int, int]]:
    """relative path → (size, mtime_ns) of everything under ``folder`` ({} if it does not exist).  With ``folders``
    the folders themselves count too (``"."`` is ``folder``): a created-then-removed sub-folder shows as a change."""
    if not folder.exists():
        return {}
    out = {".": (0, folder.stat().st_mtime_ns)} if folders else {}
    for p in sorted(folder.rglob("*")):
        if folders or p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def one_error_line(err: str) -> str:
    """``err`` is exactly one ``error:`` line and no traceback."""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
