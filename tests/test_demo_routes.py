"""The demo's labels-only route: image labels → CLIP-ES seeds → WeakCLIP training → masks → mIoU, on the synthetic
set with the tiny random-init CLIP.  Proves the mechanics (every step runs and hands its files to the next), not the
quality: random CLIP weights give meaningless seeds.  Also the demo folder's rules: settings recorded, a rerun with
the same settings reuses the finished steps, one with other settings is refused unless --overwrite."""

from __future__ import annotations

import json

from folder_state import listing, one_error_line

from weakclip.cli.demo import SETTINGS_FILE, main, prepare_out


def test_labels_only_route_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--images", "8", "--iters", "2", "--route", "labels-only"]) == 0
    result = json.loads((out / "result_labels_only.json").read_text())
    assert 0.0 <= result["clip_seeds_miou"] <= 100.0 and 0.0 <= result["masks_from_clip_seeds_miou"] <= 100.0
    seeds = sorted((out / "data" / "ClipSeeds").glob("*.png"))
    masks = sorted((out / "masks" / "clip_seeds").glob("*.png"))
    assert len(seeds) == 8 and [p.name for p in masks] == [p.name for p in seeds]
    assert (out / "run_clip_seeds" / "final.safetensors").is_file()
    assert "not what pretrained CLIP gives" in capsys.readouterr().out
    assert json.loads((out / SETTINGS_FILE).read_text()) == {"images": 8, "iters": 2, "seed": 0}

    # other settings: refused, naming the differences; nothing in the folder changes
    before = listing(out)
    assert main(["--out", str(out), "--images", "8", "--iters", "3", "--seed", "1", "--route", "labels-only"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith(
        f"error: --out {out} holds a demo run with other settings (--iters 2 → 3, --seed 0 → 1); "
        "pass --overwrite to run the demo again there"
    )
    assert listing(out) == before

    # the same settings: the finished steps are reused (and said so), the training is not redone
    final = out / "run_clip_seeds" / "final.safetensors"
    mtime = final.stat().st_mtime_ns
    assert main(["--out", str(out), "--images", "8", "--iters", "2", "--route", "labels-only"]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: same settings as recorded (--images 8, --iters 2, --seed 0): reusing the finished steps" in printed
    assert f"reusing {out / 'data'}" in printed
    assert final.stat().st_mtime_ns == mtime


def test_overwrite_deletes_only_the_demo_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    for d in ("data/JPEGImages", "run", "masks/unmasked", "onnx", "report"):
        (out / d).mkdir(parents=True)
        (out / d / "x").write_text("old")
    (out / "result.json").write_text("{}")
    (out / SETTINGS_FILE).write_text(json.dumps({"images": 200, "iters": 600, "seed": 0}))
    (out / "notes.txt").write_text("mine")
    prepare_out(out, {"images": 24, "iters": 6, "seed": 0}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [SETTINGS_FILE, "notes.txt"]
    assert json.loads((out / SETTINGS_FILE).read_text()) == {"images": 24, "iters": 6, "seed": 0}
    assert (
        f"--overwrite: deleted data, {SETTINGS_FILE}, masks, onnx, report, result.json, run from {out}\n"
        in capsys.readouterr().out
    )


def test_refusals_change_nothing(tmp_path, capsys):
    # a folder of someone else's files
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = listing(other)
    assert main(["--out", str(other), "--quick"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        f"error: --out {other} is not empty (notes.txt) and holds no demo run; choose a new or empty folder"
    )
    assert listing(other) == before

    # demo outputs without recorded settings (a folder from an older version): the settings cannot be compared
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    (old / "result.json").write_text("{}")
    before = listing(old)
    assert main(["--out", str(old), "--quick"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        f"error: --out {old} holds demo outputs (data, result.json) but no readable {SETTINGS_FILE}"
    )
    assert listing(old) == before

    # bad values: refused before the folder is made
    new = tmp_path / "new" / "demo"
    assert main(["--out", str(new), "--images", "0"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        "error: --images and --iters must be >= 1, got --images 0 --iters 600"
    )
    assert not (tmp_path / "new").exists()
