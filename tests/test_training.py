"""Training program: smoke run through main([...]), SIGKILL + --resume, 2-process torchrun on CPU."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import weakclip
from weakclip.data.synthetic import make_synthetic_dataset
from weakclip.errors import UsageError
from weakclip.training import config as config_mod
from weakclip.training.config import TrainConfig, read_config
from weakclip.training.train import load_config, lr_at, main, sample_indices

REPO = Path(__file__).resolve().parents[1]


# what a finished run leaves in work_dir
RUN_FILES = (
    "config.yaml",
    "last.pt",
    "final.safetensors",
    "best.safetensors",
    "text_embeddings.safetensors",
    "log.csv",
    "val.csv",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, images=24, seed=1, val_images=4)
    return root


def one_line(err: str) -> str:
    """``err`` after checking it is one ``error:`` line with no traceback (the boundary may add a ``--help`` hint)."""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_schedule_and_sampling():
    cfg = read_config(None, ["train.iters=100", "train.warmup_iters=10", "train.lr=1e-3", "train.min_lr=1e-6"])
    assert lr_at(0, cfg) == pytest.approx(1e-3 * cfg.train.warmup_ratio)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-6)
    assert lr_at(55, cfg) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    # ranks see disjoint samples; the stream is a function of position only (what --resume relies on)
    a = sample_indices(10, 0, 0, 5, rank=0, world=2)
    b = sample_indices(10, 0, 0, 5, rank=1, world=2)
    assert not set(a) & set(b)
    assert sample_indices(10, 0, 3, 2, 0, 1) == sample_indices(10, 0, 0, 5, 0, 1)[3:]


def test_unknown_override_is_rejected():
    with pytest.raises(UsageError, match="unknown config key"):
        read_config(None, ["train.no_such=1"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.iters=abc", "error: override train.iters=abc: train.iters takes an integer, got 'abc' (str)\n"),
        ("train.lr=fast", "error: override train.lr=fast: train.lr takes a number, got 'fast' (str)\n"),
        ("train.amp=maybe", "error: override train.amp=maybe: train.amp takes true/false, got 'maybe' (str)\n"),
        ("train.iters=", "error: override train.iters=: train.iters cannot be null; it takes an integer\n"),
    ],
)
def test_override_of_the_wrong_type_is_one_usage_line(tmp_path, capsys, override, expected):
    assert main([override, f"work_dir={tmp_path / 'run'}"]) == 2
    assert one_line(capsys.readouterr().err).startswith(expected.rstrip("\n"))
    assert not (tmp_path / "run").exists()


def test_config_values_are_typed_and_packaged_configs_read_when_used(tmp_path, monkeypatch):
    cfg = read_config(None, ["train.iters=1e3", "train.lr=1", "work_dir=123", "data.train_lists=train.txt"])
    assert cfg.train.iters == 1000 and cfg.train.lr == 1.0 and cfg.work_dir == "123"
    assert cfg.data.train_lists == ["train.txt"]
    assert read_config(None, ["schedule.val_max_images=null"]).schedule.val_max_images is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [8]\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: train\.batch_size takes an integer, got \[8\] \(list\)"):
        read_config(str(bad), [])
    toml = tmp_path / "run.toml"
    toml.write_text('work_dir = "runs/t"\n[train]\niters = 3\n[model.overrides]\ncoattn_layers = 1\n')
    cfg = read_config(str(toml), ["model.overrides.n_contexts=4"])
    assert (cfg.train.iters, cfg.work_dir, cfg.model.overrides) == (3, "runs/t", {"coattn_layers": 1, "n_contexts": 4})
    toml.write_text("[train]\nepochs = 3\n")
    with pytest.raises(UsageError, match=r"run\.toml: unknown config key 'train\.epochs'"):
        read_config(str(toml), [])
    # the defaults are the dataclass; synthetic_tiny is their shipped name; check-data reads the same config as data
    assert read_config("synthetic_tiny") == read_config(None) == TrainConfig()
    assert load_config(None, ["train.iters=5"]) == read_config(None, ["train.iters=5"]).to_dict()
    # a packaged config by name; the files are read when the config is read (not at import)
    assert read_config("voc_vit_b16", []).model.preset == "vit_b16_voc"
    fake = tmp_path / "configs"
    fake.mkdir()
    (fake / "voc_vit_b16.yaml").write_text("train:\n  iters: 7\n")
    monkeypatch.setattr(config_mod, "packaged_configs", lambda: {"voc_vit_b16": fake / "voc_vit_b16.yaml"})
    assert read_config("voc_vit_b16", []).train.iters == 7


def test_help_lists_every_config_key(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  train\.iters +int +600 +total iterations$", out, re.M), out
    assert re.search(r"^  data\.labels +str \| null +cls_labels\.json +image-level labels", out, re.M), out
    keys = re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)?) ", out.split("\nconfig keys", 1)[1], re.M)
    sections = {k: v for k, v in TrainConfig().to_dict().items() if isinstance(v, dict)}
    expected = {"device", "work_dir"} | {f"{sec}.{key}" for sec, v in sections.items() for key in v}
    assert set(keys) == expected, set(keys) ^ expected


def test_train_smoke(data, tmp_path):
    work = tmp_path / "run"
    rc = main(
        [
            f"data.root={data}",
            f"work_dir={work}",
            "train.iters=4",
            "train.batch_size=2",
            "schedule.val_interval=4",
            "schedule.checkpoint_interval=2",
            "data.num_workers=0",
            "--no-progress",
        ]
    )
    assert rc == 0
    for f in RUN_FILES:
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
    args = [
        sys.executable,
        str(REPO / "training" / "train.py"),
        f"data.root={data}",
        f"work_dir={work}",
        "train.iters=400",
        "train.batch_size=2",
        "schedule.checkpoint_interval=1",
        "schedule.val_interval=100000",
        "data.num_workers=0",
        "--no-progress",
        "schedule.log_interval=1",
    ]
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
    out = subprocess.run(
        args[:4] + ["train.iters=" + str(it + 3)] + args[5:] + ["--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from {work / 'last.pt'} at iteration {it}" in out.stdout
    assert not list(work.glob(".*.tmp*"))
    assert torch.load(work / "last.pt", weights_only=True)["iteration"] == it + 3
    steps = [int(ln.split()[1].split("/")[0]) for ln in out.stdout.splitlines() if ln.startswith("it ")]
    assert steps == [it + 1, it + 2, it + 3]  # continues, does not redo finished iterations


def test_resume_restores_exact_state(data, tmp_path):
    """3 iterations straight == 2 iterations, stop, --resume for the 3rd (same weights bit for bit)."""
    common = [
        f"data.root={data}",
        "train.batch_size=2",
        "schedule.val_interval=1000",
        "data.num_workers=0",
        "loss.boundary=0",
        "--no-progress",
    ]
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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        str(REPO / "tests" / "ddp_worker.py"),
        str(data),
        str(tmp_path / "run"),
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    d0, d1 = (out / "rank0.txt").read_text(), (out / "rank1.txt").read_text()
    assert d0.startswith("2 ") and d0 == d1


def test_evaluator_agrees_with_training_validation(data, tmp_path):
    """generate.py + weakclip.masks.evaluate on the val list reproduce the mIoU that training validation logged."""
    import csv

    from weakclip.cli.generate import main as generate_main
    from weakclip.masks.evaluate import evaluate_dirs

    work = tmp_path / "run"
    main(
        [
            f"data.root={data}",
            f"work_dir={work}",
            "train.iters=2",
            "train.batch_size=2",
            "schedule.val_interval=2",
            "data.num_workers=0",
            "--no-progress",
        ]
    )
    logged = float(list(csv.DictReader(open(work / "val.csv")))[-1]["miou"])
    val_list = data / "ImageSets" / "Segmentation" / "val.txt"
    rc = generate_main(
        [
            "--images",
            str(val_list),
            "--image-root",
            str(data / "JPEGImages"),
            "--engine",
            "torch",
            "--model",
            str(work / "final.safetensors"),
            "--out",
            str(tmp_path / "masks"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    names = val_list.read_text().split()
    metrics, n = evaluate_dirs(tmp_path / "masks", data / "SegmentationClass", 6, names)
    assert n == len(names) == 4
    assert metrics.miou == pytest.approx(logged, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# work_dir safety: no second run on top of a finished one, --overwrite, --resume with the same config only


def _iterations(path):
    import csv

    return [int(r["iteration"]) for r in csv.DictReader(open(path))]


def test_work_dir_rules(data, tmp_path, capsys):
    import csv

    work = tmp_path / "run"
    common = [
        f"data.root={data}",
        f"work_dir={work}",
        "train.batch_size=2",
        "schedule.val_interval=1000",
        "schedule.log_interval=1",
        "data.num_workers=0",
        "loss.boundary=0",
        "--no-progress",
    ]
    assert main([*common, "train.iters=2"]) == 0
    assert _iterations(work / "log.csv") == [1, 2]
    before = {f.name: f.read_bytes() for f in work.iterdir()}
    capsys.readouterr()

    # the same command again: refused, nothing touched
    assert main([*common, "train.iters=2"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        f"error: {work}: work_dir already holds a training run (best.safetensors, config.yaml, "
        "final.safetensors, last.pt, log.csv and 2 more); pass --resume to continue it or --overwrite to start again "
        "(deletes this program's outputs there)"
    )
    assert {f.name: f.read_bytes() for f in work.iterdir()} == before

    # --resume with a different loss / model / optimiser setting: refused, naming the difference
    assert main([*common, "train.iters=3", "loss.aux=0.2", "--resume"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        f"error: {work / 'last.pt'}: --resume with a config that differs from the recorded run: "
        "loss.aux 0.4 → 0.2; only train.iters, schedule.*, data.num_workers, data.root, device, "
        "work_dir may change on resume (use a new work_dir, or --overwrite)"
    )
    assert main([*common, "train.iters=3", "train.lr=0.5", "model.overrides.coattn_layers=1", "--resume"]) == 2
    assert ": model.overrides.coattn_layers <unset> → 1 (and 1 more: train.lr); only" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in work.iterdir()} == before

    # rows logged after the last checkpoint (a run killed between checkpoints) are not repeated by --resume
    with open(work / "log.csv", "a", newline="") as f:
        w = csv.writer(f)
        w.writerow([3, 0.1, 1, 1, 1, 1, 1])
    assert main([*common, "train.iters=4", "--resume", "schedule.log_interval=2"]) == 0
    assert _iterations(work / "log.csv") == [1, 2, 3, 4]

    # --overwrite: our outputs go, a foreign file stays, iterations start at 1 again
    (work / "notes.txt").write_text("mine")
    assert main([*common, "train.iters=1", "--overwrite"]) == 0
    assert _iterations(work / "log.csv") == [1]
    assert (work / "notes.txt").read_text() == "mine"
    assert torch.load(work / "last.pt", weights_only=True)["iteration"] == 1

    # a folder holding only someone else's files is not a work_dir
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"x")
    assert main([f"data.root={data}", f"work_dir={other}", "train.iters=1"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: {other}: work_dir is not empty (data.bin); choose a new or empty folder")
    assert main([f"work_dir={other}", "--resume", "--overwrite"]) == 2  # the two flags exclude each other
    assert "--resume" in one_line(capsys.readouterr().err)


def test_resume_with_other_training_data_is_refused(data, tmp_path, capsys):
    other = tmp_path / "syn20"
    make_synthetic_dataset(other, images=20, seed=1, val_images=2)
    work = tmp_path / "run"
    common = [
        f"work_dir={work}",
        "train.batch_size=2",
        "schedule.val_interval=1000",
        "data.num_workers=0",
        "loss.boundary=0",
        "--no-progress",
    ]
    assert main([*common, f"data.root={data}", "train.iters=1"]) == 0
    capsys.readouterr()
    assert main([*common, f"data.root={other}", "train.iters=2", "--resume"]) == 2  # data.root may change, the list not
    assert one_line(capsys.readouterr().err).startswith(
        f"error: {work / 'last.pt'}: --resume with other training data: the training list or the class names differ "
        "from the recorded run (use a new work_dir, or --overwrite)"
    )


def test_outputs_follow_the_umask(data, tmp_path):
    work = tmp_path / "run"
    old = os.umask(0o027)
    try:
        assert (
            main(
                [
                    f"data.root={data}",
                    f"work_dir={work}",
                    "train.iters=1",
                    "train.batch_size=2",
                    "schedule.val_interval=1",
                    "data.num_workers=0",
                    "loss.boundary=0",
                    "--no-progress",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in work.iterdir()}
    assert set(modes) >= set(RUN_FILES)
    assert modes == dict.fromkeys(modes, 0o640), modes


def test_missing_data_is_a_usage_error_before_anything_is_written(tmp_path, capsys):
    work = tmp_path / "run"
    assert main([f"data.root={tmp_path / 'nowhere'}", f"work_dir={work}", "train.iters=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data: split list 'train.txt' not found (tried ") and err.count("\n") == 1, err
    assert not work.exists()
