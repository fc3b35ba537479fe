"""Losses and the dense CRF against hand-computed (numpy) values, gradient checks and CRF behaviour."""

import numpy as np
import pytest
import torch

from weakclip.data.classes import IMAGENET_MEAN, IMAGENET_STD
from weakclip.model import losses


def _np_smooth_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True) + 1e-7
    return p / p.sum(1, keepdims=True)


def test_smooth_softmax_matches_formula():
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    np.testing.assert_allclose(losses.smooth_softmax(z).numpy(), _np_smooth_softmax(z.numpy()), rtol=1e-12)


def test_balanced_seed_loss_hand_computed():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 2, 3))
    seeds = np.array(
        [
            [[0, 0, 1], [2, 255, 1]],  # 2 bg, 3 fg (classes 1 and 2 pooled), 1 ignored
            [[0, 255, 0], [0, 0, 255]],  # bg only: the fg term of this image is 0 / max(0, 1e-4) = 0
        ]
    )
    p = _np_smooth_softmax(z)
    bg_terms, fg_terms = [], []
    for b in range(2):
        bg_sum, bg_n, fg_sum, fg_n = 0.0, 0, 0.0, 0
        for i in range(2):
            for j in range(3):
                y = seeds[b, i, j]
                if y == 0:
                    bg_sum -= np.log(p[b, 0, i, j])
                    bg_n += 1
                elif y != 255:
                    fg_sum -= np.log(p[b, y, i, j])
                    fg_n += 1
        bg_terms.append(bg_sum / max(bg_n, 1e-4))
        fg_terms.append(fg_sum / max(fg_n, 1e-4))
    expected = np.mean(bg_terms) + np.mean(fg_terms)
    got = losses.balanced_seed_loss(losses.smooth_softmax(torch.from_numpy(z)), torch.from_numpy(seeds))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_aux_score_loss_hand_computed_same_size():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, size=(1, 3, 2, 2))
    seeds = np.array([[[0, 2], [255, 1]]])
    total = 0.0
    for i in range(2):
        for j in range(2):
            y = seeds[0, i, j]
            if y == 255:
                continue
            logits = s[0, :, i, j] / 0.07
            total += -(logits[y] - np.log(np.exp(logits).sum()))
    expected = total / 4  # averaged over ALL pixels, the ignored one included
    got = losses.aux_score_loss(torch.from_numpy(s), torch.from_numpy(seeds))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_aux_score_loss_resizes_to_seed_size():
    s = np.array([0.3, -0.2, 0.1]).reshape(1, 3, 1, 1)  # a 1x1 map resizes to a constant
    seeds = np.full((1, 4, 4), 1)
    seeds[0, 0, :2] = 255
    logits = s[0, :, 0, 0] / 0.07
    nll = -(logits[1] - np.log(np.exp(logits).sum()))
    expected = nll * 14 / 16
    got = losses.aux_score_loss(torch.from_numpy(s), torch.from_numpy(seeds))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_clipped_kl_values_and_gradient_stop():
    # Pixel ratios Q/P: 0.5/0.5=1, 0.49/0.01=49 (clipped to 20), 0.01/0.49 (~0.02, clipped to 0.05).
    p = torch.tensor([[0.5, 0.01, 0.49], [0.5, 0.49, 0.01]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    q = torch.tensor([[0.5, 0.49, 0.01], [0.5, 0.01, 0.49]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    p.requires_grad_(True)
    pn, qn = p.detach().numpy(), q.numpy()
    expected = (qn * np.log(np.clip(qn / pn, 0.05, 20))).sum(1).mean()
    got = losses.clipped_kl(q, p)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got.backward()
    ratio = qn / pn
    inside = (ratio >= 0.05) & (ratio <= 20)
    expected_grad = np.where(inside, -qn / pn, 0.0) / 2  # d/dP of Q log(Q/P), mean over the 2 pixels
    np.testing.assert_allclose(p.grad.numpy(), expected_grad, rtol=1e-12)
    assert (p.grad.numpy()[~inside] == 0).all() and (~inside).sum() == 4


def test_gradcheck_seed_loss_and_kl():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    seeds = torch.randint(0, 3, (2, 3, 3))
    seeds[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda x: losses.balanced_seed_loss(losses.smooth_softmax(x), seeds), (z,))
    with torch.no_grad():  # a target close to P keeps every ratio well inside the clip range (no kinks)
        q = losses.smooth_softmax(z + 0.3 * torch.randn_like(z))
    assert torch.autograd.gradcheck(lambda x: losses.clipped_kl(q, losses.smooth_softmax(x)), (z,))


def test_denormalize_roundtrip():
    img = torch.randint(0, 256, (2, 3, 8, 8)).float()
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = losses.denormalize_to_uint8((img - m) / s, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img.permute(0, 2, 3, 1).numpy().astype(np.uint8))


def _edge_case(K=2, H=24, W=32, edge=16, cross=22):
    """Image with a colour edge at column ``edge``; P's decision boundary sits at column ``cross`` instead."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :edge] = (30, 60, 200)
    image[:, edge:] = (220, 200, 40)
    p1 = np.clip(0.5 + (np.arange(W) - cross) * 0.03, 0.05, 0.95)  # class-1 probability ramp
    probs = np.zeros((K, H, W), np.float32)
    probs[1] = p1[None, :]
    probs[0] = 1 - probs[1]
    return image, probs


def test_crf_is_a_distribution_and_snaps_to_the_colour_edge():
    crf = pytest.importorskip("weakclip.model.crf")
    pytest.importorskip("pydensecrf")
    image, probs = _edge_case()
    q = crf.dense_crf(image, probs, **crf.BOUNDARY_LOSS_CRF.as_kwargs())
    assert q.shape == probs.shape and q.dtype == np.float32
    assert (q >= 0).all() and (q <= 1 + 1e-6).all()
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    before = probs.argmax(0)
    after = q.argmax(0)
    assert (before[:, 16:22] == 0).all()  # P puts the boundary at column 22 ...
    assert (after[:, :16] == 0).all() and (after[:, 16:] == 1).all()  # ... the CRF moves it to the edge
    assert np.abs(q - 0.5).mean() > np.abs(probs - 0.5).mean()  # sharper


def test_crf_postprocess_only_predicted_classes():
    crf = pytest.importorskip("weakclip.model.crf")
    pytest.importorskip("pydensecrf")
    image, p2 = _edge_case()
    probs = np.full((5, *p2.shape[1:]), 0.01, np.float32)
    probs[2], probs[4] = p2[0], p2[1]  # classes 2 and 4 win; 0, 1, 3 never do
    probs /= probs.sum(0, keepdims=True)
    labels, q = crf.crf_postprocess(image, probs, crf.VOC_POSTPROC_CRF)
    assert set(np.unique(labels).tolist()) <= {2, 4}
    assert (q[[0, 1, 3]] == 0).all()
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    one, q1 = crf.crf_postprocess(image, probs, crf.CLIP_ES_CRF, classes=[3])
    assert (one == 3).all() and (q1[3] == 1).all()


def test_weakclip_loss_terms_weights_and_backward():
    pytest.importorskip("pydensecrf")
    torch.manual_seed(0)
    B, K, H, W = 2, 3, 32, 32
    logits = torch.randn(B, K, H // 4, W // 4, requires_grad=True)
    score = torch.empty(B, K, H // 16, W // 16).uniform_(-1, 1).requires_grad_(True)
    seeds = torch.randint(0, K, (B, H, W))
    seeds[:, :4] = 255
    images = torch.randn(B, 3, H, W)
    crit = losses.WeakCLIPLoss(IMAGENET_MEAN, IMAGENET_STD)
    out = crit(logits, score, seeds, images)
    assert set(out) == {"loss", "seed", "boundary", "aux"}
    expected = out["seed"] + out["boundary"] + 0.4 * out["aux"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # The seed term is the balanced loss on logits resized to H/8 and seeds nearest-downsampled to H/8.
    z8 = torch.nn.functional.interpolate(logits, size=(H // 8, W // 8), mode="bilinear", align_corners=False)
    y8 = seeds[:, ::8, ::8]
    ref = losses.balanced_seed_loss(losses.smooth_softmax(z8), y8)
    assert out["seed"].item() == pytest.approx(ref.item(), rel=1e-6)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(score.grad).all() and score.grad.abs().sum() > 0
    # Ablations: a zero weight skips the term (seed only).
    seed_only = losses.WeakCLIPLoss(IMAGENET_MEAN, IMAGENET_STD, boundary_weight=0, aux_weight=0)
    o = seed_only(logits, score, seeds, images)
    assert o["boundary"].item() == 0 and o["aux"].item() == 0
    assert o["loss"].item() == pytest.approx(out["seed"].item(), rel=1e-6)


def test_crf_missing_pydensecrf_is_a_clear_import_error(monkeypatch):
    import sys

    from weakclip.model import crf

    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf.dense_crf(
            np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 2), 0.5, np.float32), **crf.VOC_POSTPROC_CRF.as_kwargs()
        )
