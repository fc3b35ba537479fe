"""weakclip train on the user's path: wrong label files refused before any model work, a resume already at
train.iters, the progress rule in a log file, and no empty work_dir left by a refused run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from folder_state import listing, one_error_line

import weakclip
from weakclip.cli.check_data import main as check_data_main
from weakclip.data.synthetic import make_synthetic_dataset
from weakclip.training.train import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, images=12, seed=2, size=(64, 64), val_images=4)
    return root


def common(data: Path, work: Path) -> list[str]:
    return [
        f"data.root={data}",
        f"work_dir={work}",
        "train.batch_size=2",
        "data.val_list=null",
        "data.num_workers=0",
        "schedule.checkpoint_interval=1",
        "schedule.log_interval=1",
        "loss.boundary=0",
    ]


@pytest.mark.parametrize("length", [3, 20])
def test_label_vectors_of_the_wrong_length_are_refused_before_the_model(data, tmp_path, capsys, monkeypatch, length):
    names = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    bad = tmp_path / "cls_labels.npy"
    np.save(bad, {n: np.eye(length, dtype=np.float32)[0] for n in names}, allow_pickle=True)

    # the line check-data prints for this file (the synthetic set has K = 6 classes)
    assert check_data_main([str(data), "--labels", str(bad)]) == 1
    problem = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("problem: ") and "vector" in ln)
    expected = problem[len("problem: ") :]
    assert f"has a {length}-dim label vector; expected 5" in expected

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the labels were checked")

    monkeypatch.setattr(weakclip, "build_model", no_model)
    work = tmp_path / "new" / "run"
    assert main([*common(data, work), "train.iters=2", f"data.labels={bad}", "--no-progress"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith(f"error: {expected}"), (err, expected)
    assert not (tmp_path / "new").exists()  # nothing created, not even the parent of work_dir


def test_resume_at_or_past_train_iters_says_so(data, tmp_path, capsys):
    work = tmp_path / "run"
    assert main([*common(data, work), "train.iters=2", "--no-progress"]) == 0
    capsys.readouterr()
    before = listing(work)
    for iters in (2, 1):
        assert main([*common(data, work), f"train.iters={iters}", "--resume", "--no-progress"]) == 2
        captured = capsys.readouterr()
        err = one_error_line(captured.err)
        assert err.startswith(
            f"error: {work / 'last.pt'}: --resume: the run is already at iteration 2 ≥ "
            f"train.iters={iters}; raise train.iters to continue"
        ), err
        assert "best val mIoU" not in captured.out
        assert listing(work) == before

    # stopped after its last checkpoint, before the final model: the resume only writes the final outputs
    (work / "final.safetensors").unlink()
    assert main([*common(data, work), "train.iters=2", "--resume", "--no-progress"]) == 0
    assert (work / "final.safetensors").is_file()
    assert [ln.split(",")[0] for ln in (work / "log.csv").read_text().splitlines()[1:]] == ["1", "2"]

    # raising train.iters continues
    assert main([*common(data, work), "train.iters=3", "--resume", "--no-progress"]) == 0
    assert [ln.split(",")[0] for ln in (work / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_progress_in_a_log_file_is_lines_not_bar_frames(data, tmp_path):
    work = tmp_path / "run"
    log = tmp_path / "train.log"
    env = {**os.environ, "WEAKCLIP_PROGRESS_INTERVAL": "0.01", "HF_HUB_OFFLINE": "1"}
    env.pop("WEAKCLIP_PROGRESS", None)
    with open(log, "wb") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "weakclip", "train", *common(data, work), "train.iters=6"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            timeout=600,
        ).returncode
    text = log.read_bytes().decode()
    assert rc == 0, text
    assert "\r" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("[train] ")]
    assert any(" it (" in ln and "it/s" in ln and "loss=" in ln for ln in lines), text
    assert lines[-1].startswith("[train] done: 6/6 it in "), text


def test_progress_mode_from_the_environment(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WEAKCLIP_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("WEAKCLIP_PROGRESS", "off")  # off: the log line every schedule.log_interval instead
    assert main([*common(data, tmp_path / "off"), "train.iters=2"]) == 0
    captured = capsys.readouterr()
    assert "[train]" not in captured.out + captured.err and "\r" not in captured.err
    assert "it 2/2 loss " in captured.out

    monkeypatch.setenv("WEAKCLIP_PROGRESS", "lines")
    assert main([*common(data, tmp_path / "lines"), "train.iters=2"]) == 0
    captured = capsys.readouterr()
    assert "[train] 1/2 it (50.0 %)" in captured.err and "\r" not in captured.err
    assert "it 2/2 loss " not in captured.out

    monkeypatch.setenv("WEAKCLIP_PROGRESS", "bar")  # asked for explicitly: the tqdm bar even in a captured stream
    assert main([*common(data, tmp_path / "bar"), "train.iters=2"]) == 0
    assert "\r" in capsys.readouterr().err


def test_refused_run_leaves_no_new_folder(tmp_path, capsys):
    work = tmp_path / "a" / "b" / "run"
    assert main([f"data.root={tmp_path / 'nowhere'}", f"work_dir={work}", "train.iters=1", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_too_many_bad_samples_is_a_failure_line(tmp_path, capsys):
    """More than data.max_bad_fraction of the samples unreadable: exit status 1 and one line (not a traceback)."""
    root = tmp_path / "syn"
    make_synthetic_dataset(root, images=12, seed=3, size=(64, 64), val_images=2)
    names = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for name in names[:2]:
        (root / "SeedMasks" / f"{name}.png").unlink()
    work = tmp_path / "run"
    assert main([*common(root, work), "train.iters=1", "--no-progress"]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith(f"error: 2 of {len(names)} samples "), err
    assert "are bad, more than max_bad_fraction=0.01: " in err and names[0] in err, err
    assert not work.exists()
