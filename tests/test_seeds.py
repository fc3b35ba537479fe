"""CLIP-ES seeds (weakclip/masks/seeds.py) against plain restatements of the CLIP-ES code, and the seeds CLI.

Every test runs the *tiny* preset with random CLIP weights: they prove the mechanics (the arithmetic equals the
restated original, shapes, labels, the ignore threshold, resume/shard/failure handling), not seed quality, which
needs OpenAI's pretrained CLIP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from weakclip.cli.seeds import main as seeds_main
from weakclip.masks import seeds
from weakclip.masks.seeds import SeedOptions, box_mask, build_seeder, preprocess, seed_from_cams, view_size

REPO = Path(__file__).resolve().parents[1]
EPS64 = float(np.finfo(np.float64).eps)
N_SYN = 20  # synthetic training images of the CLI tests


@pytest.fixture(scope="module")
def seeder64():
    return build_seeder("tiny", clip_weights=None, dtype=torch.float64)


@pytest.fixture(scope="module")
def seeder32():
    return build_seeder("tiny", clip_weights=None)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Flat colour regions plus mild noise (the CRF's lattice stays small, as on photographs)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float64)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(3):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# plain restatements of the CLIP-ES code (generate_cams_voc12.py, pytorch_grad_cam, utils.py, eval_cam_with_crf.py)


def oracle_tokens(visual, x):
    """encode_image up to the last block (clip/model.py VisionTransformer.forward + Transformer.forward, blocks
    1..L-1 under no_grad), with open_clip's own block forward, and the head-averaged attention of each block."""
    with torch.no_grad():
        t = visual.conv1(x)
        D, h, w = t.shape[1:]
        t = t.reshape(1, D, -1).permute(0, 2, 1)
        pos = visual.positional_embedding
        g = int(round((pos.shape[0] - 1) ** 0.5))
        grid = pos[1:].permute(1, 0).reshape(1, D, g, g)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).reshape(D, -1).permute(1, 0)
        t = torch.cat([visual.class_embedding + torch.zeros(1, 1, D, dtype=t.dtype), t], dim=1)
        t = visual.ln_pre(t + torch.cat([pos[:1], grid], 0))
        attns = []
        for blk in visual.transformer.resblocks[:-1]:
            attns.append(oracle_attention(blk, blk.ln_1(t)))
            t = blk(t)
    return t, attns, (h, w)


def oracle_attention(blk, y):
    """Head-averaged softmax(q kᵀ / √d) from nn.MultiheadAttention's packed in_proj, written out."""
    mha = blk.attn
    D, nh = mha.embed_dim, mha.num_heads
    q, k, _ = (y[0] @ mha.in_proj_weight.T + mha.in_proj_bias).split(D, dim=-1)
    q = q.reshape(-1, nh, D // nh).transpose(0, 1)
    k = k.reshape(-1, nh, D // nh).transpose(0, 1)
    return torch.softmax(q @ k.transpose(1, 2) / (D // nh) ** 0.5, dim=-1).mean(0)  # (N, N)


def scale_cam_image(img: np.ndarray) -> np.ndarray:
    img = img - np.min(img)
    return img / (1e-7 + np.max(img))


def oracle_gradcam(seeder, x, labels):
    """One class at a time, as CLIP-ES loops: forward_last_layer on the (no-grad) features, softmax over
    [labelled classes, background texts] × 100, backward of the target probability into resblocks[-1].ln_1's
    output; GradCAM weights = mean gradient over h, w; ReLU; scale_cam_image twice.  Also returns Σ_d |w_d A_d|
    per map (the size of the terms the CAM sums, for the error bound)."""
    v = seeder.visual
    tokens, attns, (h, w) = oracle_tokens(v, x)
    blk = v.transformer.resblocks[-1]
    text = torch.cat([seeder.fg_text[[c - 1 for c in labels]], seeder.bg_text], 0)
    cams, sizes = [], []
    for idx in range(len(labels)):
        act = blk.ln_1(tokens).detach().requires_grad_(True)
        y = tokens + blk.ls_1(blk.attention(act))
        y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
        f = torch.mean(v.ln_post(y)[:, 1:, :], dim=1) @ v.proj
        f = f / f.norm(dim=1, keepdim=True)
        t = text / text.norm(dim=1, keepdim=True)
        probs = (100.0 * f @ t.t()).softmax(dim=-1)
        probs[0, idx].backward()
        A = act[0, 1:].detach().numpy().reshape(h, w, -1).transpose(2, 0, 1)  # reshape_transform: (D, h, w)
        G = act.grad[0, 1:].numpy().reshape(h, w, -1).transpose(2, 0, 1)
        weights = np.mean(G, axis=(1, 2))
        cam = (weights[:, None, None] * A).sum(axis=0)
        sizes.append(np.abs(weights[:, None, None] * A).sum(axis=0).max() / max(cam.max(), 1e-300))
        cams.append(scale_cam_image(scale_cam_image(np.maximum(cam, 0))))
    attns.append(oracle_attention(blk, blk.ln_1(tokens)).detach())
    return np.stack(cams), attns, max(sizes)


def oracle_refine(attn_mean: torch.Tensor, cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """generate_cams_voc12.py perform(), the per-class refinement, line by line."""
    h, w = cam.shape
    aff_mask = torch.from_numpy(mask).to(attn_mean.dtype).view(1, h * w)
    trans_mat = attn_mean / torch.sum(attn_mean, dim=0, keepdim=True)
    trans_mat = trans_mat / torch.sum(trans_mat, dim=1, keepdim=True)
    for _ in range(2):
        trans_mat = trans_mat / torch.sum(trans_mat, dim=0, keepdim=True)
        trans_mat = trans_mat / torch.sum(trans_mat, dim=1, keepdim=True)
    trans_mat = (trans_mat + trans_mat.transpose(1, 0)) / 2
    for _ in range(1):
        trans_mat = torch.matmul(trans_mat, trans_mat)
    trans_mat = trans_mat * aff_mask
    cam_refined = torch.matmul(trans_mat, torch.from_numpy(cam).to(trans_mat.dtype).view(-1, 1)).reshape(h, w)
    return scale_cam_image(cam_refined.numpy())


def oracle_scoremap2bbox(cam: np.ndarray, threshold: float) -> np.ndarray:
    """utils.py scoremap2bbox(multi_contour_eval=True) + the aff_mask loop of perform()."""
    import cv2

    height, width = cam.shape
    img = np.expand_dims((cam * 255).astype(np.uint8), 2)
    _, thr = cv2.threshold(src=img, thresh=int(threshold * np.max(img)), maxval=255, type=cv2.THRESH_BINARY)
    contours = cv2.findContours(image=thr, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
    boxes = [[0, 0, 0, 0]]
    if contours:
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    mask = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


# ----------------------------------------------------------------------------------------------------------------
# the numeric pieces against the oracles


@pytest.mark.parametrize("hw", [(100, 140), (61, 47)])
def test_gradcam_attention_and_refinement_equal_the_plain_restatement(seeder64, hw):
    image = smooth_image(*hw, seed=hw[0])
    labels = [2, 5, 9]
    x = preprocess(image, view_size(*hw, 1.0)).double()
    vc = seeder64.view_cams(x, labels)
    cams, attns, kappa = oracle_gradcam(seeder64, x, labels)
    assert vc.grid == (-(-hw[0] // 16), -(-hw[1] // 16))
    # Both sides are float64 and differ only in summation order (one batched pass vs a loop; matmul vs broadcast
    # sum over D).  Rounding (eps 2.2e-16) over the ~1e4 operations behind a value gives relative errors ≲ 1e-12
    # of the summed terms' size; normalising by the map's max scales that by kappa = Σ_d|w_d A_d| / max CAM.
    assert kappa < 1e3
    np.testing.assert_allclose(vc.gradcam.numpy(), cams, rtol=0, atol=1e4 * EPS64 * kappa)
    # The last 8 blocks' head-averaged attention (the tiny tower has 4 blocks: all of them), patch → patch.
    attn_mean = torch.stack(attns[-8:]).mean(0)[1:, 1:]
    np.testing.assert_allclose(vc.attn.numpy(), attn_mean.numpy(), rtol=0, atol=1e-14)  # probabilities ≤ 1
    masks = np.stack([oracle_scoremap2bbox(c.astype(np.float32), 0.4) for c in vc.gradcam.numpy()])
    np.testing.assert_array_equal(vc.masks, masks)
    # Refinement: the oracle masks T's columns and multiplies per class; ours multiplies the masked CAMs by T once.
    # With {0, 1} masks the products are identical; only the n-term sums are reassociated (n ≤ 48 here).
    ref = np.stack([oracle_refine(attn_mean, c, m) for c, m in zip(vc.gradcam.numpy(), masks)])
    np.testing.assert_allclose(vc.refined.numpy(), ref, rtol=0, atol=1e-12)


def test_float32_path_follows_float64(seeder32, seeder64):
    """The default float32 pipeline vs the float64 one on the same weights: final CAMs at image size."""
    image = smooth_image(90, 120, seed=3)
    _, c32, _ = seeder32.cams(image, [1, 4])
    _, c64, _ = seeder64.cams(image, [1, 4])
    # float32 eps 1.2e-7 × the same ~1e4-operation depth and kappa ≤ 1e3 (asserted above) bounds the error by
    # ~1e-3 of the map range; measured differences are far below.
    assert np.abs(c32 - c64).max() < 1e-3


def test_affinity_transition_properties(seeder64):
    vc = seeder64.view_cams(preprocess(smooth_image(64, 80), (64, 80)).double(), [3])
    t = seeds.affinity_transition(vc.attn, sinkhorn_rounds=3, power_steps=0)
    np.testing.assert_allclose(t.numpy(), t.numpy().T, atol=0)  # symmetrised
    assert (t >= 0).all()
    t2 = seeds.affinity_transition(vc.attn, sinkhorn_rounds=3, power_steps=1)
    np.testing.assert_allclose(t2.numpy(), (t @ t).numpy(), rtol=1e-13)


def test_box_mask_follows_scoremap2bbox_including_its_border_clip():
    cam = np.zeros((8, 10), np.float32)
    cam[2:5, 3:7] = 1.0  # blob → box rows 2..4, cols 3..6
    cam[6:8, 8:10] = 0.9  # touches the bottom-right corner: the end clip (size − 1) drops row 7 and col 9
    cam[0, 0] = 0.4  # uint8 102 = int(0.4·255): not above the threshold (THRESH_BINARY is '>')
    m = box_mask(cam, 0.4)
    expected = np.zeros_like(m)
    expected[2:5, 3:7] = 1
    expected[6:7, 8:9] = 1
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(m, oracle_scoremap2bbox(cam, 0.4))
    assert box_mask(np.zeros((5, 5), np.float32), 0.4).sum() == 0  # no contour → empty (CLIP-ES: box [0,0,0,0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.random((12, 15)).astype(np.float32) ** 3
        np.testing.assert_array_equal(box_mask(c, 0.7), oracle_scoremap2bbox(c, 0.7))


# ----------------------------------------------------------------------------------------------------------------
# seeds: shapes, ranges, labels, ignore threshold


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (37, 29)])
def test_shapes_and_value_ranges_on_voc_like_sizes(seeder32, hw):
    labels = [15, 7]
    crf = hw == (37, 29)  # the CRF on full VOC sizes is covered by the CLI test; keep this test fast
    opts = SeedOptions() if crf else SeedOptions(crf=None)
    seeder32.options = opts
    try:
        r = seeder32.seed(smooth_image(*hw), labels, keep_views=True)
    finally:
        seeder32.options = SeedOptions()
    H, W = hw
    assert r.views[0].grid == (-(-H // 16), -(-W // 16))
    assert r.cams.shape == (2, H, W) and r.cams.dtype == np.float32
    assert r.cams.min() >= 0 and r.cams.max() <= 1
    assert r.scores.shape == (3, H, W) and 0 <= r.scores.min() and r.scores.max() <= 1
    assert r.mask.shape == (H, W) and r.mask.dtype == np.uint8
    assert set(np.unique(r.mask)) <= {0, 7, 15, 255}
    np.testing.assert_array_equal(r.keys, [15, 7])  # label order kept
    if not crf:
        assert 255 not in r.mask  # without the CRF there is no confidence to threshold (eval_cam.py)


def test_absent_classes_never_appear(seeder32):
    rng = np.random.default_rng(1)
    seeder32.options = SeedOptions(crf=None)
    try:
        for i in range(4):
            labels = sorted(rng.choice(np.arange(1, 21), size=i + 1, replace=False).tolist())
            r = seeder32.seed(smooth_image(48, 64, seed=i), labels)
            assert set(np.unique(r.mask)) <= {0, *labels}
        # duplicates collapse, no label → all background, a class outside 1..K-1 is an error
        assert seeder32.seed(smooth_image(32, 32), [4, 4]).keys.tolist() == [4]
        assert (seeder32.seed(smooth_image(32, 32), []).mask == 0).all()
        with pytest.raises(ValueError, match="outside"):
            seeder32.seed(smooth_image(32, 32), [21])
    finally:
        seeder32.options = SeedOptions()


def oracle_crf_seed(image_rgb: np.ndarray, cams: np.ndarray, keys: list[int], thr: float) -> np.ndarray:
    """eval_cam_with_crf.py process(), restated (image as cv2.imread would give it: BGR)."""
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as utils

    image = image_rgb[..., ::-1].astype(np.float32)
    image -= (104.008, 116.669, 122.675)
    image = image.transpose(2, 0, 1)
    bg_score = np.power(1 - np.max(cams, axis=0, keepdims=True), 1)
    prob = np.concatenate((bg_score, cams), axis=0)
    image = image.astype(np.uint8).transpose(1, 2, 0)
    C, H, W = prob.shape
    d = dcrf.DenseCRF2D(W, H, C)
    d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(prob)))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    q = np.array(d.inference(10)).reshape((C, H, W))
    label = np.pad(np.asarray(keys), (1, 0))[np.argmax(q, axis=0)]
    label[np.max(q, axis=0) < thr] = 255
    return label.astype(np.uint8)


def test_crf_and_ignore_threshold_equal_the_original():
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(0)
    H, W = 40, 60
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # noisy scores and image: the CRF stays unsure in places
    cams = rng.random((2, H, W)).astype(np.float32)
    keys = [3, 8]
    for thr in (0.0, 0.5, 0.95, 1.01):
        mask, scores = seed_from_cams(image, cams, keys, SeedOptions(ignore_threshold=thr))
        np.testing.assert_array_equal(mask, oracle_crf_seed(image, cams, keys, thr))
    ign = seed_from_cams(image, cams, keys)[0]  # default 0.95
    assert 0 < (ign == 255).mean() < 0.5 and set(np.unique(ign)) == {0, 3, 8, 255}
    assert 255 not in seed_from_cams(image, cams, keys, SeedOptions(ignore_threshold=0.0))[0]
    assert (seed_from_cams(image, cams, keys, SeedOptions(ignore_threshold=1.01))[0] == 255).all()
    plain, scores = seed_from_cams(image, cams, keys, SeedOptions(crf=None))
    np.testing.assert_array_equal(plain, np.array([0, 3, 8])[scores.argmax(0)])  # no CRF: argmax, nothing ignored
    np.testing.assert_allclose(scores[0], 1 - cams.max(0))


def test_crf_image_wraps_like_numpys_cast():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    numpy_cast = (img[..., ::-1].astype(np.float32) - np.float32(seeds.CAFFE_MEAN_BGR)).astype(np.uint8)
    np.testing.assert_array_equal(seeds.crf_input_image(img, "clip_es"), numpy_cast)
    np.testing.assert_array_equal(seeds.crf_input_image(img, "rgb"), img)


def test_prompt_sets():
    from weakclip.data.classes import COCO_CLASSES, VOC_CLASSES

    voc = seeds.resolve_prompts(VOC_CLASSES)
    assert voc.name == "voc" and len(voc.background) == 25 and voc.box_threshold == 0.4
    assert voc.foreground_texts()[14] == "a clean origami person with clothes,people,human."
    coco = seeds.resolve_prompts(COCO_CLASSES)
    assert coco.name == "coco" and len(coco.background) == 23 and coco.box_threshold == 0.7
    assert len(coco.class_prompts) == 80 and coco.class_prompts[COCO_CLASSES.index("tv") - 1] == "tvmonitor screen"
    gen = seeds.resolve_prompts(("background", "tree", "zebra crossing"))
    assert gen.name == "generic" and "tree" not in gen.background and len(gen.background) == 24
    assert gen.class_prompts == ("tree", "zebra crossing")


# ----------------------------------------------------------------------------------------------------------------
# the CLI: layout, resume after SIGKILL, settings, shards, failures


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from weakclip.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, images=N_SYN, seed=0, size=(64, 64), max_size=(96, 128), val_images=1)
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--images",
        str(root / "ImageSets" / "Segmentation" / "train.txt"),
        "--image-root",
        str(root / "JPEGImages"),
        "--labels",
        str(root / "cls_labels.json"),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--clip-weights",
        "none",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _summary(text: str) -> dict[str, int]:
    line = next(ln for ln in text.splitlines() if ln.startswith("summary"))
    words = line.split(":", 1)[1].replace(",", "").split()
    return {"done": int(words[0]), "skipped": int(words[3]), "failed": int(words[7])}


def _finished(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.png") if not p.name.startswith("."))


def test_cli_sigkill_resume_equals_clean_run_and_training_reads_the_seeds(syn, tmp_path, capsys):
    out = syn / "ClipSeeds"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "weakclip", "seeds", *_args(syn, out, "--workers", "1")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(_finished(out)) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _finished(out)
    assert 3 <= len(finished) < N_SYN, "the run must be killed midway"
    before = {p.name: p.stat().st_mtime_ns for p in finished}

    threads = torch.get_num_threads()
    try:
        assert seeds_main(_args(syn, out)) == 0
        s = _summary(capsys.readouterr().out)
        assert s == {"done": N_SYN - len(finished), "skipped": len(finished), "failed": 0}
        assert {p.name: p.stat().st_mtime_ns for p in finished} == before  # finished seeds not redone
        assert not [p.name for p in out.rglob(".*")], "temporary files left behind"
        clean = tmp_path / "clean"
        assert seeds_main(_args(syn, clean)) == 0
    finally:
        torch.set_num_threads(threads)
    for p in _finished(clean):
        assert (out / p.name).read_bytes() == p.read_bytes()
    labels = json.loads((syn / "cls_labels.json").read_text())
    for p in _finished(out):
        with Image.open(p) as im:
            assert im.mode == "P"
            vals = set(np.unique(np.asarray(im)).tolist())
        assert vals <= {0, 255, *labels[p.stem]}, p.name

    # the layout training reads: data.root = syn, data.seed_dir = "ClipSeeds"
    from weakclip.data.datasets import SegmentationDataset, read_class_names

    ds = SegmentationDataset(
        syn,
        "train.txt",
        seed_dir="ClipSeeds",
        class_names=read_class_names(syn / "class_names.txt"),
        crop_size=64,
        train=True,
        labels=syn / "cls_labels.json",
    )
    sample = ds[0]
    assert sample["seed"].shape == (64, 64) and not ds.bad_samples

    # other settings into the same folder are refused (one line, exit 2); --overwrite is the way
    assert seeds_main(_args(syn, out, "--bg-power", "2")) == 2
    assert "other settings" in capsys.readouterr().err


def test_cli_shards_failures_and_usage_errors(syn, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    names = [f"train_{i:06d}" for i in range(6)]
    for n in names:
        (images / f"{n}.jpg").write_bytes((syn / "JPEGImages" / f"{n}.jpg").read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    labels = {**json.loads((syn / "cls_labels.json").read_text()), "broken": [1]}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "class_names.txt").write_text((syn / "class_names.txt").read_text())
    base = [
        "--images",
        str(images),
        "--labels",
        str(tmp_path / "labels.json"),
        "--preset",
        "tiny",
        "--clip-weights",
        "none",
        "--no-progress",
        "--crf",
        "none",
        "--workers",
        "0",
    ]
    out = tmp_path / "out"
    rcs = [
        seeds_main([*base, "--out", str(out), "--shard", f"{i}/2", "--save-scores", "--overlays", "3"])
        for i in range(2)
    ]
    assert sorted(rcs) == [0, 1]  # the shard holding the broken image fails, the other succeeds
    assert sorted(p.stem for p in _finished(out)) == names
    assert len(list((out / "overlays").glob("*.png"))) == 2  # 3 spread over 7 inputs, one of them the broken one
    for n in names:  # scores: (K, H, W), row 0 background, labelled rows the CAMs, other rows 0
        sc = np.load(out / "probs" / f"{n}.npy")
        mask = np.asarray(Image.open(out / f"{n}.png"))
        assert sc.shape == (6, *mask.shape) and sc.dtype == np.float16
        absent = [k for k in range(1, 6) if k not in labels[n]]
        assert (sc[absent] == 0).all() and 0 <= sc.min() and sc.max() <= 1
        assert set(np.unique(mask)) <= {0, *labels[n]}
    fails = [p for p in out.glob("failures-*-of-2.txt")]
    assert len(fails) == 1 and fails[0].read_text().startswith("broken\t")
    capsys.readouterr()
    # usage mistakes: one line, exit 2, before any work
    del labels[names[0]]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    assert seeds_main([*base, "--out", str(tmp_path / "o2")]) == 2
    assert "no image-level label" in capsys.readouterr().err
    assert seeds_main([*base, "--out", str(tmp_path / "o3"), "--ignore-threshold", "0.9"]) == 2
    assert "needs --crf" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
