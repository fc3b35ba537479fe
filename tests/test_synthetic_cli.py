"""weakclip-synthetic command line: out-of-range options are one usage line (exit 2) before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from weakclip.data.synthetic import main


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--classes", "25"], "error: --classes 25: the synthetic set has 1..20 foreground classes (named by the VOC "
                              "classes)\n"),
        (["--classes", "0"], "error: --classes 0: the synthetic set has 1..20 foreground classes (named by the VOC "
                             "classes)\n"),
        (["--images", "0"], "error: --images must be >= 1 and --val >= 0, got --images 0 --val None\n"),
        (["--size", "8", "8"], "error: --size 8 8 / --max-size 8 8: sides must be >= 16 and --max-size >= --size\n"),
    ],
    ids=["classes-25", "classes-0", "images-0", "size-8"],
)  # fmt: skip
def test_out_of_range_option_is_one_usage_line(tmp_path: Path, capsys, args: list[str], expected: str) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err == expected
    assert not out.exists()


def test_smallest_valid_set_is_written(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), "--images", "1", "--val", "0", "--classes", "20", "--size", "32", "32"]) == 0
    assert len((out / "class_names.txt").read_text().split("\n")) == 22  # background + 20 + trailing newline
