"""weakclip-generate: resumability under SIGKILL, failure reporting, sharding, outputs; the torch engine end-to-end.

The stand-in engine below is a deterministic random conv net behind the real Engine interface; the subprocess test
loads it as ``--engine test_generate:StandInEngine`` (the registry's "module:Factory" form) with ``tests/`` on
PYTHONPATH.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from weakclip.cli.generate import main
from weakclip.data.io import read_mask
from weakclip.engines.base import Engine, EngineError, get_engine, register_engine
from weakclip.masks.batch import list_inputs, overlay_names, shard_items

REPO = Path(__file__).resolve().parents[1]
K = 4


class StandInEngine(Engine):
    """(B, 3, h, w) → (B, K, h/4, w/4) with a fixed random stride-4 conv; ``delay`` seconds per call."""

    name = "standin"

    def __init__(self, model_path=None, *, delay: float = 0.0, crop: int = 64) -> None:
        super().__init__(class_names=[f"c{i}" for i in range(K)], crop_size=crop, mean=(128,) * 3, std=(64,) * 3)
        self.delay = float(delay)
        self.net = nn.Conv2d(3, K, 4, stride=4)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        self.check_windows(windows)
        if self.delay:
            time.sleep(self.delay)
        with torch.no_grad():
            return self.net(windows)


register_engine("standin", StandInEngine)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is fastest, and avoids spin-waiting on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = rng.integers(32, 65, size=2)
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3)
        name = f"img_{i:04d}"
        Image.fromarray(img).save(folder / f"{name}.jpg", quality=90)
        names.append(name)
    return names


def _add_bad_inputs(folder: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 48, 3), 100, np.uint8)).save(buf, format="JPEG")
    (folder / "bad_corrupt.jpg").write_bytes(buf.getvalue()[:200])  # header but truncated data
    (folder / "bad_empty.jpg").write_bytes(b"")


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted(out.glob("*.png"))}


def _summary(text: str) -> dict[str, int]:
    m = re.search(r"(\d+) images done, (\d+) skipped .*?, (\d+) failed", text)
    assert m, text
    return dict(zip(("done", "skipped", "failed"), map(int, m.groups())))


def _cli(images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "weakclip",
        "generate",
        "--images",
        str(images),
        "--out",
        str(out),
        "--no-progress",
        "--engine",
        "test_generate:StandInEngine",
        *extra,
    ]


def test_sigkill_midway_then_resume_equals_clean_run(tmp_path, capsys):
    images = tmp_path / "images"
    names = make_images(images, 200)
    _add_bad_inputs(images)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)

    # 1) Slow run (sleep per engine call), killed with SIGKILL once some masks exist.
    proc = subprocess.Popen(
        _cli(images, out, "--engine-opt", "delay=0.03", "--chunk", "1", "--workers", "2"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(_outputs(out)) < 40:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _outputs(out)  # temporaries of the killed writes (".name.*.tmp.png") are not outputs
    assert 40 <= len(finished) < 200, "the run must be killed midway"
    for p in finished:  # every visible output is complete
        with Image.open(p) as im:
            im.load()
    before = {p.name: p.stat().st_mtime_ns for p in finished}

    # 2) Resume: finished images skipped (not rewritten), bad inputs reported, exit status 1.
    res = subprocess.run(_cli(images, out, "--workers", "2"), cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    s = _summary(res.stdout)
    assert s == {"done": 200 - len(finished), "skipped": len(finished), "failed": 2}
    assert {p.name: p.stat().st_mtime_ns for p in finished} == before
    assert not [p.name for p in out.rglob(".*")], "temporary files left behind"
    failures = dict(line.split("\t", 1) for line in (out / "failures.txt").read_text().splitlines())
    assert set(failures) == {"bad_corrupt", "bad_empty"}
    assert "empty" in failures["bad_empty"] and "bad_corrupt.jpg" in failures["bad_corrupt"]

    # 3) A clean run in-process gives the same folder.
    clean = tmp_path / "clean"
    assert main(["--images", str(images), "--out", str(clean), "--engine", "standin", "--no-progress"]) == 1
    resumed, fresh = _masks(out), _masks(clean)
    assert sorted(resumed) == sorted(fresh) == names
    for n in names:
        np.testing.assert_array_equal(resumed[n], fresh[n])
        assert (out / f"{n}.png").read_bytes() == (clean / f"{n}.png").read_bytes()

    # 4) A third run has nothing left but the two bad files.
    capsys.readouterr()
    assert main(["--images", str(images), "--out", str(clean), "--engine", "standin", "--no-progress"]) == 1
    assert _summary(capsys.readouterr().out) == {"done": 0, "skipped": 200, "failed": 2}


def _outputs(out: Path) -> list[Path]:
    """Finished masks: pathlib's glob also matches hidden names, which are atomic-write temporaries here."""
    return sorted(p for p in out.glob("*.png") if not p.name.startswith("."))


def test_sharding_covers_every_image_once(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    names = make_images(images, 23, seed=1)
    seen: list[str] = []
    for i in range(3):
        out = tmp_path / f"shard{i}"
        assert (
            main(
                [
                    "--images",
                    str(images),
                    "--out",
                    str(out),
                    "--engine",
                    "standin",
                    "--no-progress",
                    "--shard",
                    f"{i}/3",
                    "--workers",
                    "0",
                ]
            )
            == 0
        )
        seen += [p.stem for p in out.glob("*.png")]
    assert sorted(seen) == names
    # torchrun variables pick the same shard when --shard is absent.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    out = tmp_path / "env"
    assert main(["--images", str(images), "--out", str(out), "--engine", "standin", "--no-progress"]) == 0
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in (tmp_path / "shard1").glob("*.png"))
    assert "shard 1/3" in capsys.readouterr().out
    items = list_inputs(images)
    assert [it.name for it in shard_items(items, 2, 3)] == names[2::3]


def test_outputs_labels_probs_overlays_and_list_file(tmp_path):
    images = tmp_path / "images"
    names = make_images(images, 6, seed=2)
    (tmp_path / "train.txt").write_text("\n".join(names[:5]) + "\n")
    labels = {n: [1] for n in names}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    rc = main(
        [
            "--images",
            str(tmp_path / "train.txt"),
            "--image-root",
            str(images),
            "--out",
            str(out),
            "--engine",
            "standin",
            "--no-progress",
            "--labels",
            str(tmp_path / "labels.json"),
            "--save-probs",
            "--overlays",
            "2",
            "--scales",
            "0.75,1.0",
            "--flip",
            "--batch",
            "3",
        ]
    )
    assert rc == 0
    masks = _masks(out)
    assert sorted(masks) == names[:5]
    for n, m in masks.items():
        h, w = Image.open(images / f"{n}.jpg").size[::-1]
        assert m.shape == (h, w)
        assert set(np.unique(m)) <= {0, 1, 255}
        p = np.load(out / "probs" / f"{n}.npy")
        assert p.shape == (K, h, w) and p.dtype == np.float16
        np.testing.assert_allclose(p.astype(np.float32).sum(0), 1.0, atol=3e-3)
        free = p.argmax(0)
        assert (m[np.isin(free, [2, 3])] == 255).all()
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert {f"{n}" for n in overlay_names(list_inputs(tmp_path / "train.txt", images), 2)} == {
        p.stem for p in (out / "overlays").glob("*.png")
    }
    cfg = json.loads((out / "generate_config.json").read_text())
    assert cfg["inference"]["scales"] == [0.75, 1.0] and cfg["inference"]["stride"] == 43


def test_engine_registry_errors():
    with pytest.raises(EngineError, match="unknown engine"):
        get_engine("nope", None)
    with pytest.raises(EngineError, match="cannot import engine factory"):
        get_engine("no_such_module:X", None)
    assert isinstance(get_engine("standin", None), StandInEngine)


def test_torch_engine_refuses_fp16_on_cpu():
    from weakclip.engines.torch_engine import TorchEngine

    class M(nn.Module):
        config = type("C", (), {"class_names": ("a", "b"), "crop_size": 32, "mean": (0, 0, 0), "std": (1, 1, 1)})

    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        TorchEngine(M(), precision="fp16")
    eng = TorchEngine(M())
    assert eng.num_classes == 2 and eng.crop_size == 32


def test_torch_engine_real_tiny_model_end_to_end(tmp_path):
    from weakclip import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(model, ckpt)
    from weakclip.engines.torch_engine import TorchEngine

    with TorchEngine(ckpt) as eng:  # precomputed text side == the model's own forward
        assert (eng.name, eng.crop_size, eng.class_names) == ("torch", 128, model.config.class_names)
        x = torch.randn(2, 3, 48, 80)
        with torch.no_grad():
            torch.testing.assert_close(eng(x), model(x).logits, atol=1e-5, rtol=0)
    images = tmp_path / "images"
    names = make_images(images, 3, seed=3)
    out = tmp_path / "out"
    rc = main(
        [
            "--images",
            str(images),
            "--out",
            str(out),
            "--engine",
            "torch",
            "--model",
            str(ckpt),
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    masks = _masks(out)
    assert sorted(masks) == names
    for n, m in masks.items():
        assert m.shape == Image.open(images / f"{n}.jpg").size[::-1]
        assert m.max() < model.config.num_classes


class _FlakyEngine(StandInEngine):
    """Fails on any batch holding a (nearly) white window: one bad image must not sink its whole chunk."""

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if (windows.flatten(1).mean(1) > 1.9).any():
            raise RuntimeError("simulated engine failure")
        return super().__call__(windows)


def test_inference_failure_is_isolated_to_its_image(tmp_path, capsys):
    images = tmp_path / "images"
    names = make_images(images, 7, seed=4)
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(images / "white.png")
    register_engine("flaky", _FlakyEngine)
    out = tmp_path / "out"
    rc = main(["--images", str(images), "--out", str(out), "--engine", "flaky", "--no-progress", "--chunk", "4"])
    assert rc == 1
    assert sorted(p.stem for p in out.glob("*.png")) == names
    (line,) = (out / "failures.txt").read_text().splitlines()
    assert line.startswith("white\tinference: RuntimeError: simulated engine failure")
    assert _summary(capsys.readouterr().out) == {"done": 7, "skipped": 0, "failed": 1}


def test_missing_engine_module_is_a_clear_error(monkeypatch):
    import weakclip.engines.base as base

    monkeypatch.setitem(base._BUILTIN, "fake", "weakclip.engines.no_such_engine")
    with pytest.raises(
        EngineError, match=r"engine 'fake' is not available: weakclip/engines/no_such_engine\.py is missing"
    ):
        get_engine("fake", "model.onnx")
