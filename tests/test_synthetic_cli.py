"""weakclip-synthetic command line: out-of-range options and a non-empty --out are one usage line (exit 2) before
anything is written; --overwrite replaces only the files of the synthetic layout."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

import pytest
from folder_state import listing

from weakclip.cli.synthetic import main
from weakclip.data import synthetic


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--classes", "25"],
            "error: --classes 25: the synthetic set has 1..20 foreground classes (named by the VOC classes)\n",
        ),
        (
            ["--classes", "0"],
            "error: --classes 0: the synthetic set has 1..20 foreground classes (named by the VOC classes)\n",
        ),
        (["--images", "0"], "error: --images must be >= 1 and --val >= 0, got --images 0 --val None\n"),
        (["--size", "8", "8"], "error: --size 8 8 / --max-size 8 8: sides must be >= 16 and --max-size >= --size\n"),
    ],
    ids=["classes-25", "classes-0", "images-0", "size-8"],
)
def test_out_of_range_option_is_one_usage_line(tmp_path: Path, capsys, args: list[str], expected: str) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected.rstrip("\n")) and captured.err.count("\n") == 1, captured.err
    assert not out.exists()


def test_smallest_valid_set_is_written(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), "--images", "1", "--val", "0", "--classes", "20", "--size", "32", "32"]) == 0
    assert len((out / "class_names.txt").read_text().split("\n")) == 22  # background + 20 + trailing newline


SMALL = ["--val", "1", "--size", "64", "64", "--classes", "3"]


def test_existing_dataset_is_refused_without_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), "--images", "6", *SMALL]) == 0
    capsys.readouterr()
    before = listing(out)
    assert main(["--out", str(out), "--images", "2", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --out {out}: already holds a synthetic dataset (ImageSets, JPEGImages, SeedMasks, "
        "SegmentationClass, class_names.txt and 2 more); choose a new or empty folder, or pass "
        "--overwrite"
    )
    assert err.count("\n") == 1 and "Traceback" not in err
    assert listing(out) == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = listing(other)
    assert main(["--out", str(other), "--images", "2", *SMALL]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            f"error: --out {other}: is not empty (notes.txt); choose a new or empty folder, or pass --overwrite"
        )
        and err.count("\n") == 1
    )
    assert listing(other) == before


def test_overwrite_replaces_only_the_synthetic_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    assert main(["--out", str(out), "--images", "6", *SMALL]) == 0
    mine = [out / "notes.txt", out / "JPEGImages" / "mine.jpg", out / "ImageSets" / "Segmentation" / "custom.txt"]
    for p in mine:
        p.write_text("mine")
    assert main(["--out", str(out), "--images", "2", *SMALL, "--overwrite"]) == 0
    assert "--overwrite: deleted the 26 file(s) of the synthetic set" in capsys.readouterr().out  # (6+1) × 3 + 5
    for folder in ("JPEGImages", "SegmentationClass", "SeedMasks"):
        names = sorted(p.stem for p in (out / folder).iterdir() if p.name != "mine.jpg")
        assert names == ["train_000000", "train_000001", "val_000000"], (folder, names)  # no stale train_000005
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == ["train_000000", "train_000001"]
    assert all(p.read_text() == "mine" for p in mine)


def test_a_failed_run_leaves_no_empty_out(tmp_path: Path, capsys, monkeypatch) -> None:
    @contextlib.contextmanager
    def disk_full(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # the folders are made, then the first write fails
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(synthetic, "atomic_path", disk_full)
    out = tmp_path / "new" / "syn"
    assert main(["--out", str(out), "--images", "2", *SMALL]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # syn/JPEGImages, syn and new were made by this run: all removed

    kept = tmp_path / "empty"
    kept.mkdir()  # a folder that was there before stays
    assert main(["--out", str(kept), "--images", "2", *SMALL]) == 1
    capsys.readouterr()
    assert kept.is_dir() and list(kept.iterdir()) == []
