"""The demo's labels-only route: image labels → CLIP-ES seeds → WeakCLIP training → masks → mIoU, on the synthetic
set with the tiny random-init CLIP.  Proves the mechanics (every step runs and hands its files to the next), not the
quality: random CLIP weights give meaningless seeds."""

from __future__ import annotations

import json

from weakclip.demo import main


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
