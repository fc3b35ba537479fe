"""The one error boundary (weakclip/errors.py) and the user-path failures it reports, per command: each failure is
one ``error:`` line naming the option and the file, with the exit status the README promises (2 usage, 1 failure,
130 interrupt), no traceback, and nothing in the output folder changed or half-written.

Disk-full and read-only folders are real: a small tmpfs filled to the last byte, and a tmpfs mounted read-only
(this needs the mount privilege; where it is missing those tests skip with the reason, and the in-process
OSError-injecting tests below still cover the same code paths).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_state import listing
from test_generate import K, StandInEngine, make_images  # noqa: F401  (registers the "standin" engine)

import weakclip
from weakclip import cli, errors
from weakclip.data.io import save_mask_png

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _cmd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``weakclip <argv>`` in-process through the dispatcher (the same path as the console script)."""
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err


def _line(err: str) -> str:
    """The one non-empty stderr line, which must be an ``error:`` line (no traceback, no usage block)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("info:", "warning:"))]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _mount(target: Path, *opts: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(target)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode}): needs root/CAP_SYS_ADMIN"
        )


@pytest.fixture
def mounts(tmp_path: Path):
    """``full()``: a tmpfs filled to the last byte; ``readonly(populate)``: a tmpfs remounted read-only."""
    made: list[Path] = []

    class M:
        def full(self, name: str = "full") -> Path:
            d = tmp_path / name
            _mount(d, "size=256k")
            made.append(d)
            with open(d / "filler", "wb", buffering=0) as f:  # fill every block
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            return d

        def readonly(self, name: str = "ro", populate=None) -> Path:
            d = tmp_path / name
            _mount(d, "size=4m")
            made.append(d)
            if populate:
                populate(d)
            r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True)
            assert r.returncode == 0, r.stderr
            return d

    yield M()
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, a list, labels, a tiny WeakCLIP checkpoint (6 classes) and GT masks."""
    d = tmp_path_factory.mktemp("boundary")
    names = make_images(d / "images", 3)
    (d / "list.txt").write_text("".join(f"{n}\n" for n in names))
    (d / "labels.json").write_text(json.dumps({n: [1] for n in names}))
    torch.manual_seed(0)
    model = weakclip.build_model("tiny", class_names=[f"c{i}" for i in range(6)])
    weakclip.save_checkpoint(model, d / "tiny.safetensors")
    (d / "gt").mkdir()
    for n in names:
        save_mask_png(d / "gt" / f"{n}.png", np.zeros((8, 8), np.uint8))
    return d


def _gen(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--engine",
        "standin",
        "--images",
        str(data / "images"),
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------------------
# the boundary itself


def _raiser(exc: BaseException):
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize(
    ("exc", "status", "start"),
    [
        (errors.UsageError("--x y: bad"), 2, "error: --x y: bad (see weakclip t --help)"),
        (errors.RuntimeFailure("it broke"), 1, "error: it broke"),
        (errors.LockHeld("held"), 1, "error: held"),
        (
            errors.OutputError("o/a.png", OSError(errno.ENOSPC, "x")),
            1,
            "error: --out o: cannot write o/a.png: disk full",
        ),
        (
            errors.OutputError("o/a.png", OSError(errno.EROFS, "x")),
            1,
            "error: --out o: cannot write o/a.png: read-only",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "o/b"), 1, "error: --out o: cannot write o/b: permission"),
        (FileNotFoundError(errno.ENOENT, "No such file", "in.txt"), 2, "error: in.txt: no such file or directory"),
        (KeyboardInterrupt(), 130, "error: weakclip t: interrupted"),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), 1, "error: weakclip t: output closed before the end"),
        (ModuleNotFoundError("no", name="onnxruntime"), 1, "error: weakclip t needs the 'onnxruntime' module: pip"),
        (ZeroDivisionError("division by zero"), 1, "error: weakclip t: unexpected error: ZeroDivisionError"),
    ],
)
def test_each_failure_class_is_one_line(exc, status, start, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WEAKCLIP_DEBUG", raising=False)
    monkeypatch.setattr(sys.stdout, "flush", lambda: None)  # capsys' stdout; the broken-pipe case raises itself
    rc = errors.run_command(_raiser(exc), ["--out", "o", "in.txt"], prog="weakclip t")
    assert rc == status
    assert _line(capsys.readouterr().err).startswith(start)


def test_debug_shows_the_traceback(capsys, monkeypatch) -> None:
    rc = errors.run_command(_raiser(errors.RuntimeFailure("it broke")), ["--debug"], prog="weakclip t")
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and err.strip().endswith("error: it broke")
    monkeypatch.setenv("WEAKCLIP_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        errors.run_command(_raiser(ZeroDivisionError("x")), [], prog="weakclip t")


def test_usage_error_is_one_line_without_the_usage_block(capsys) -> None:
    rc, err = _cmd(capsys, "generate", "--images", "x", "--out", "y", "--shard", "5/2")
    assert rc == 2
    line = _line(err)
    assert "--shard must be i/N" in line and line.endswith("(see weakclip generate --help)")
    rc, err = _cmd(capsys, "evaluate", "--pred", "p")
    assert rc == 2 and "the following arguments are required: --gt" in _line(err)


# ---------------------------------------------------------------------------------------------------------------
# generate


def test_generate_engine_bogus_and_precision_refusal_are_usage_errors(data, tmp_path, capsys) -> None:
    rc, err = _cmd(capsys, *_gen(data, tmp_path / "o", "--engine", "bogus"))
    assert rc == 2 and "--engine bogus: unknown engine" in _line(err)
    rc, err = _cmd(
        capsys,
        "generate",
        "--model",
        str(data / "tiny.safetensors"),
        "--images",
        str(data / "images"),
        "--out",
        str(tmp_path / "o2"),
        "--precision",
        "fp16",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert rc == 2 and "fp16 needs a CUDA device" in _line(err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()  # refused runs leave no folder


def test_generate_wrong_inputs_name_the_option(data, tmp_path, capsys) -> None:
    img = data / "images" / "img_0000.jpg"
    cases = [
        (["--images", str(img)], 2, f"--images {img}: this is an image file"),
        (["--labels", str(img)], 2, f"--labels {img}: not a label file"),
        (["--model", str(data)], 2, f"--model {data}: a directory"),
    ]
    for extra, status, start in cases:
        argv = _gen(data, tmp_path / "o", *extra)
        if "--model" in extra:
            argv[argv.index("standin")] = "auto"
        rc, err = _cmd(capsys, *argv)
        assert rc == status, err
        assert _line(err).startswith(f"error: {start}"), err
        assert not (tmp_path / "o").exists()


def test_generate_truncated_checkpoint_is_one_line(data, tmp_path, capsys) -> None:
    blob = (data / "tiny.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) // 2])
    rc, err = _cmd(
        capsys,
        "generate",
        "--model",
        str(cut),
        "--images",
        str(data / "images"),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert rc == 2
    assert _line(err).startswith(f"error: --model {cut}: a truncated or corrupt file")


def test_generate_empty_inputs_are_failures(data, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("\n")
    rc, err = _cmd(capsys, *_gen(data, tmp_path / "o", "--images", str(tmp_path / "empty")))
    assert rc == 1 and "no images found in this folder" in _line(err)
    rc, err = _cmd(capsys, *_gen(data, tmp_path / "o", "--images", str(tmp_path / "empty.txt")))
    assert rc == 1 and "the list names no images" in _line(err)


def test_generate_list_with_a_missing_image_root_is_refused_before_the_model(data, tmp_path, capsys, monkeypatch):
    import weakclip.engines.generate as gen

    monkeypatch.setattr(gen, "get_engine", lambda *a, **k: pytest.fail("the engine was built"))
    rc, err = _cmd(
        capsys, *_gen(data, tmp_path / "o", "--images", str(data / "list.txt"), "--image-root", str(tmp_path / "nope"))
    )
    assert rc == 2 and _line(err).startswith(f"error: --image-root {tmp_path / 'nope'}: no such folder")
    rc, err = _cmd(capsys, *_gen(data, tmp_path / "o", "--images", str(data / "list.txt")))  # root = list's folder
    assert rc == 2 and "none of its 3 images exist under" in _line(err)


def test_generate_ext_without_dot(data, tmp_path, capsys) -> None:
    from PIL import Image

    (tmp_path / "png").mkdir()
    for n in ("a", "b"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "png" / f"{n}.png")
    (tmp_path / "png" / "list.txt").write_text("a\nb\n")
    rc, err = _cmd(capsys, *_gen(data, tmp_path / "o", "--images", str(tmp_path / "png" / "list.txt"), "--ext", "png"))
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["a.png", "b.png"]


@pytest.mark.parametrize("length", [3, 20])
def test_label_vectors_of_the_wrong_length_are_refused_before_model_work(data, tmp_path, capsys, monkeypatch, length):
    """The same line as check-data, from generate with the model's K read from the file (6 classes → 5-dim)."""
    from weakclip.data.labels import load_labels

    names = [p.stem for p in sorted((data / "images").glob("*.jpg"))]
    lab = tmp_path / "cls_labels.npy"
    np.save(lab, {n: np.eye(length, dtype=np.float32)[0] for n in names}, allow_pickle=True)
    with pytest.raises(ValueError) as want:
        load_labels(lab, 6)
    import weakclip.engines.generate as gen

    monkeypatch.setattr(gen, "get_engine", lambda *a, **k: pytest.fail("the engine was built"))
    rc, err = _cmd(
        capsys,
        "generate",
        "--model",
        str(data / "tiny.safetensors"),
        "--images",
        str(data / "images"),
        "--labels",
        str(lab),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert rc == 2
    assert _line(err) == f"error: {want.value} (see weakclip generate --help)"
    assert f"has a {length}-dim label vector; expected 5" in err
    assert not (tmp_path / "o").exists()


def test_a_second_run_into_a_held_folder_is_refused_with_the_pid(data, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from weakclip.data.io import FolderLock; "
            f"FolderLock({str(out)!r}, 'weakclip generate'); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = listing(out, folders=False)
        rc, err = _cmd(capsys, *_gen(data, out))
        assert rc == 1
        assert _line(err).startswith(
            f"error: {out}: another run owns this output folder: PID {holder.pid} (weakclip generate)"
        )
        assert listing(out, folders=False) == before
    finally:
        holder.kill()
        holder.wait()
    rc, err = _cmd(capsys, *_gen(data, out))  # the lock died with its process: no stale lock
    assert rc == 0, err
    assert not (out / ".weakclip.lock").exists()


def test_shards_share_a_folder_but_not_a_shard(data, tmp_path, capsys) -> None:
    """Shard 0/2 is running: shard 1/2 may write beside it; a second 0/2 or an unsharded run is refused."""
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from weakclip.data.io import FolderLock; "
            f"FolderLock({str(out)!r}, 'weakclip generate', (0, 2)); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--shard", "0/2"], []):
            rc, err = _cmd(capsys, *_gen(data, out, *extra))
            assert rc == 1 and f"PID {holder.pid} (weakclip generate --shard 0/2)" in _line(err), err
        rc, err = _cmd(capsys, *_gen(data, out, "--shard", "1/2"))
        assert rc == 0, err
        assert len(list(out.glob("*.png"))) == 1  # shard 1 of 3 images
        assert sorted(p.name for p in out.glob(".weakclip*")) == [".weakclip-0-of-2.lock", ".weakclip.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_generate_stops_at_the_first_disk_full_write(data, tmp_path, capsys, monkeypatch) -> None:
    """OSError-injecting writer: the 2nd file fails with ENOSPC; the run stops there instead of computing the rest."""
    import weakclip.data.io as wio

    make_images(tmp_path / "many", 12)
    real, calls = wio.commit_file, []

    def commit(tmp, path):
        calls.append(Path(path).name)
        if len(calls) >= 3:  # generate_config.json, one mask, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(wio, "commit_file", commit)
    out = tmp_path / "o"
    rc, err = _cmd(capsys, *_gen(data, out, "--images", str(tmp_path / "many")))
    assert rc == 1
    line = _line(err)
    assert line.startswith(f"error: --out {out}: cannot write {out}/img_0001.png: disk full"), line
    assert "stopped after 1 image(s) written" in line
    assert len(calls) == 3  # nothing computed or written after the fatal error
    assert sorted(p.name for p in out.iterdir()) == ["generate_config.json", "img_0000.png"]  # no temporaries


def test_generate_into_a_full_disk(data, mounts, capsys) -> None:
    out = mounts.full() / "masks"
    before = listing(out.parent, folders=False)
    rc, err = _cmd(capsys, *_gen(data, out))
    assert rc == 1
    assert "disk full (no space left on device)" in _line(err) and f"--out {out}" in err
    assert listing(out.parent, folders=False) == before and not out.exists()


def test_generate_into_a_read_only_folder(data, mounts, capsys) -> None:
    ro = mounts.readonly(populate=lambda d: (d / "old.txt").write_text("x"))
    before = listing(ro, folders=False)
    rc, err = _cmd(capsys, *_gen(data, ro / "masks"))
    assert rc == 1 and "read-only file system" in _line(err) and f"--out {ro / 'masks'}" in err
    assert listing(ro, folders=False) == before


# ---------------------------------------------------------------------------------------------------------------
# the other commands: read-only and full outputs, corrupt inputs


def test_export_read_only_and_full_out(data, mounts, capsys) -> None:
    ro = mounts.readonly()
    rc, err = _cmd(capsys, "export", "--checkpoint", str(data / "tiny.safetensors"), "--out", str(ro / "onnx"))
    assert rc == 1 and _line(err).startswith(f"error: --out {ro / 'onnx'}: cannot write") and "read-only" in err
    full = mounts.full("full")
    rc, err = _cmd(capsys, "export", "--checkpoint", str(data / "tiny.safetensors"), "--out", str(full / "onnx"))
    assert rc == 1 and "disk full" in _line(err)
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no folder, no truncated weakclip.onnx


def test_export_model_save_is_atomic_on_a_full_disk(tmp_path, monkeypatch) -> None:
    """A failure while the model is written leaves neither the new file nor a temporary under the final name."""
    import onnx
    from onnx import TensorProto, helper

    from weakclip.export import core

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(g, producer_name="t", opset_imports=[helper.make_opsetid("", 18)])
    target = tmp_path / "weakclip.onnx"
    target.write_bytes(b"old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    with pytest.raises(errors.OutputError, match="disk full"):
        core.save_model(proto, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["weakclip.onnx"]


def test_train_read_only_and_full_work_dir(data, mounts, capsys) -> None:
    syn = data.parent / "syn_for_train"
    if not syn.exists():
        assert cli.main(["synthetic", "--out", str(syn), "--images", "4", "--size", "64", "64", "--classes", "2"]) == 0
    for d in (mounts.readonly(), mounts.full()):
        work = d / "run"
        before = listing(d, folders=False)
        rc, err = _cmd(capsys, "train", f"data.root={syn}", f"work_dir={work}", "train.iters=2", "device=cpu")
        assert rc == 1, err
        line = _line(err)
        assert line.startswith(f"error: work_dir={work}: "), line
        assert ("read-only" in line) or ("disk full" in line), line
        assert listing(d, folders=False) == before


def test_synthetic_read_only_out(mounts, capsys) -> None:
    ro = mounts.readonly()
    rc, err = _cmd(capsys, "synthetic", "--out", str(ro / "syn"), "--images", "2")
    assert rc == 1 and _line(err).startswith(f"error: --out {ro / 'syn'}: cannot write") and "read-only" in err


def test_evaluate_json_into_a_read_only_folder(data, mounts, capsys) -> None:
    ro = mounts.readonly()
    rc, err = _cmd(
        capsys,
        "evaluate",
        "--pred",
        str(data / "gt"),
        "--gt",
        str(data / "gt"),
        "--num-classes",
        "6",
        "--json",
        str(ro / "m.json"),
    )
    assert rc == 1 and _line(err).startswith(f"error: --json {ro / 'm.json'}: cannot write") and "read-only" in err


def test_convert_truncated_pth_and_full_disk(data, mounts, tmp_path, capsys) -> None:
    from test_convert_official import official_state_dict

    pth = tmp_path / "weakclip_voc.pth"
    torch.save({"state_dict": official_state_dict()}, pth)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    rc, err = _cmd(capsys, "convert", str(cut), str(tmp_path / "x.safetensors"))
    assert rc == 2 and "a truncated or corrupt file" in _line(err) and "arbitrary pickle" not in err
    full = mounts.full()
    rc, err = _cmd(capsys, "convert", str(pth), str(full / "x.safetensors"))
    assert rc == 1 and "disk full" in _line(err) and f"{full / 'x.safetensors'}" in err
    assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_convert_wrong_preset_is_a_short_line(tmp_path, capsys) -> None:
    """A state dict that does not fit the preset lists a few keys per kind with counts, not every key."""
    from test_convert_official import official_state_dict

    pth = tmp_path / "weakclip_voc.pth"
    torch.save({"state_dict": official_state_dict()}, pth)
    # tiny-width official tensors into the ViT-B/16 architecture: hundreds of keys mismatch
    rc, err = _cmd(capsys, "convert", str(pth), str(tmp_path / "x.safetensors"), "--preset", "vit_b16_voc")
    assert rc in (1, 2)
    line = _line(err)
    assert len(line) < 1200, len(line)
    assert not (tmp_path / "x.safetensors").exists()


def test_offline_openai_weights_is_one_line(data, tmp_path, capsys, monkeypatch) -> None:
    import open_clip

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' (HF_HUB_OFFLINE=1)")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    syn = data.parent / "syn_for_train"
    if not syn.exists():
        assert cli.main(["synthetic", "--out", str(syn), "--images", "4", "--size", "64", "64", "--classes", "2"]) == 0
    rc, err = _cmd(
        capsys,
        "train",
        f"data.root={syn}",
        f"work_dir={tmp_path / 'run'}",
        "train.iters=2",
        "model.clip_weights=openai",
        "device=cpu",
    )
    assert rc == 1
    assert _line(err).startswith("error: could not obtain OpenAI CLIP weights"), err


# ---------------------------------------------------------------------------------------------------------------
# broken pipes: `weakclip check-data … | head -1`, `weakclip evaluate … | head -1`


@pytest.mark.parametrize("tool", ["check-data", "evaluate"])
def test_closed_stdout_is_one_line(tool, data, tmp_path) -> None:
    syn = tmp_path / "syn"
    assert cli.main(["synthetic", "--out", str(syn), "--images", "4", "--size", "48", "48", "--classes", "2"]) == 0
    argv = {
        "check-data": ["check-data", str(syn)],
        "evaluate": [
            "evaluate",
            "--pred",
            str(syn / "SegmentationClass"),
            "--gt",
            str(syn / "SegmentationClass"),
            "--num-classes",
            "3",
        ],
    }[tool]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "0"}
    p = subprocess.Popen(
        [sys.executable, "-m", "weakclip", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    p.stdout.close()  # the reader is gone before the tool prints (like `| head -0`)
    t0 = time.time()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert time.time() - t0 < 120
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert rc == 1 and _line(err) == f"error: weakclip {tool}: output closed before the end (broken pipe)"
