"""Training program: smoke run through main([...]), SIGKILL + --resume, 2-process torchrun on CPU."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import weakclip
from weakclip.training.train import load_config, lr_at, main, sample_indices
from weakclip.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, images=24, seed=1, val_images=4)
    return root


def test_schedule_and_sampling():
    cfg = load_config(None, ["train.iters=100", "train.warmup_iters=10", "train.lr=1e-3", "train.min_lr=1e-6"])
    assert lr_at(0, cfg) == pytest.approx(1e-3 * cfg["train"]["warmup_ratio"])
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-6)
    assert lr_at(55, cfg) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    # ranks see disjoint samples; the stream is a function of position only (what --resume relies on)
    a = sample_indices(10, 0, 0, 5, rank=0, world=2)
    b = sample_indices(10, 0, 0, 5, rank=1, world=2)
    assert not set(a) & set(b)
    assert sample_indices(10, 0, 3, 2, 0, 1) == sample_indices(10, 0, 0, 5, 0, 1)[3:]


def test_unknown_override_is_rejected():
    with pytest.raises(SystemExit, match="unknown config key"):
        load_config(None, ["train.no_such=1"])


def test_train_smoke(data, tmp_path):
    work = tmp_path / "run"
    rc = main([f"data.root={data}", f"work_dir={work}", "train.iters=4", "train.batch_size=2",
               "schedule.val_interval=4", "schedule.checkpoint_interval=2", "data.num_workers=0", "--no-progress"])  # fmt: skip
    assert rc == 0
    for f in ("config.yaml", "last.pt", "final.safetensors", "best.safetensors", "text_embeddings.safetensors",
              "log.csv", "val.csv"):  # fmt: skip
        assert (work / f).is_file(), f
    assert "train.iters" not in (work / "config.yaml").read_text() and "iters: 4" in (work / "config.yaml").read_text()
    m = weakclip.load_checkpoint(work / "final.safetensors")
    assert m.class_names[0] == "background" and len(m.class_names) == 6
    from safetensors.torch import load_file

    T = load_file(str(work / "text_embeddings.safetensors"))["text_embeddings"]
    with torch.no_grad():
        torch.testing.assert_close(T, m.eval().text_embeddings())


def test_sigkill_then_resume(data, tmp_path):
    work = tmp_path / "run"
    args = [sys.executable, str(REPO / "training" / "train.py"), f"data.root={data}", f"work_dir={work}",
            "train.iters=400", "train.batch_size=2", "schedule.checkpoint_interval=1", "schedule.val_interval=100000",
            "data.num_workers=0", "--no-progress", "schedule.log_interval=1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    seen = 0
    for line in proc.stdout:
        if line.startswith("it "):
            seen = int(line.split()[1].split("/")[0])
        if seen >= 6 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)  # checkpoints are written every iteration: likely mid-write
    proc.wait()
    assert seen >= 6
    # no corrupt checkpoint: last.pt always loads (temporaries have another name)
    state = torch.load(work / "last.pt", map_location="cpu", weights_only=True)
    it = state["iteration"]
    assert it >= 5
    for f in work.iterdir():
        assert f.name in ("config.yaml", "last.pt", "log.csv") or f.name.startswith("."), f.name
    out = subprocess.run(args[:4] + ["train.iters=" + str(it + 3)] + args[5:] + ["--resume"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from {work / 'last.pt'} at iteration {it}" in out.stdout
    assert not list(work.glob(".*.tmp*"))
    assert torch.load(work / "last.pt", weights_only=True)["iteration"] == it + 3
    steps = [int(ln.split()[1].split("/")[0]) for ln in out.stdout.splitlines() if ln.startswith("it ")]
    assert steps == [it + 1, it + 2, it + 3]  # continues, does not redo finished iterations


def test_resume_restores_exact_state(data, tmp_path):
    """3 iterations straight == 2 iterations, stop, --resume for the 3rd (same weights bit for bit)."""
    common = [f"data.root={data}", "train.batch_size=2", "schedule.val_interval=1000", "data.num_workers=0",
              "loss.boundary=0", "--no-progress"]  # fmt: skip
    main([*common, f"work_dir={tmp_path / 'a'}", "train.iters=3"])
    main([*common, f"work_dir={tmp_path / 'b'}", "train.iters=2"])
    main([*common, f"work_dir={tmp_path / 'b'}", "train.iters=3", "--resume"])
    a = weakclip.load_checkpoint(tmp_path / "a" / "final.safetensors").state_dict()
    b = weakclip.load_checkpoint(tmp_path / "b" / "final.safetensors").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_torchrun_two_processes_cpu(data, tmp_path):
    out = tmp_path / "digests"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(REPO / "tests" / "ddp_worker.py"), str(data), str(tmp_path / "run"), str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    d0, d1 = (out / "rank0.txt").read_text(), (out / "rank1.txt").read_text()
    assert d0.startswith("2 ") and d0 == d1


def test_evaluator_agrees_with_training_validation(data, tmp_path):
    """generate.py + weakclip.evaluate on the val list reproduce the mIoU that training validation logged."""
    import csv

    from weakclip.engines.generate import main as generate_main
    from weakclip.evaluate import evaluate_dirs

    work = tmp_path / "run"
    main([f"data.root={data}", f"work_dir={work}", "train.iters=2", "train.batch_size=2", "schedule.val_interval=2",
          "data.num_workers=0", "--no-progress"])  # fmt: skip
    logged = float(list(csv.DictReader(open(work / "val.csv")))[-1]["miou"])
    val_list = data / "ImageSets" / "Segmentation" / "val.txt"
    rc = generate_main(["--images", str(val_list), "--image-root", str(data / "JPEGImages"), "--engine", "torch",
                        "--model", str(work / "final.safetensors"), "--out", str(tmp_path / "masks"), "--workers", "0",
                        "--no-progress"])  # fmt: skip
    assert rc == 0
    names = val_list.read_text().split()
    metrics, n = evaluate_dirs(tmp_path / "masks", data / "SegmentationClass", 6, names)
    assert n == len(names) == 4
    assert metrics.miou == pytest.approx(logged, abs=1e-9)
