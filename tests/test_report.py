"""``weakclip report``: the numbers on the page against ``weakclip evaluate``, the gallery's choice of images, the
command's errors, and the page rendered in headless Chromium (DevTools protocol over a pipe: no console errors,
every image decoded, the charts and tables present).

The browser check needs Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it where apt works) and
skips with that reason elsewhere.  ``python tests/test_report.py PAGE.html OUT.png [HEIGHT]`` takes a screenshot of a
page with the same browser set-up (the README's picture of the demo's report).
"""

from __future__ import annotations

import contextlib
import fcntl
import html.parser
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weakclip.cli.report import main
from weakclip.data.classes import COCO_OFFICIAL91_CLASSES
from weakclip.data.io import read_mask, save_mask_png
from weakclip.data.metrics import ConfusionMatrix, confusion, metrics_from_matrix
from weakclip.data.synthetic import make_synthetic_dataset
from weakclip.masks.evaluate import evaluate_dirs
from weakclip.masks.report import describe_run, make_report

# ----------------------------------------------------------------------------------------------------------------
# data: the synthetic set's seeds and a second run (GT with blocks of wrong classes, some images left out, some half
# 255: "ignore-heavy")

SKIPPED = {3, 13}  # image indices without a mask in the second run
HEAVY = {0, 7}  # image indices whose second-run mask is 60 % 255


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report_data")
    data = root / "syn"
    make_synthetic_dataset(data, images=16, seed=3, val_images=2, size=(64, 80))
    gt = data / "SegmentationClass"
    names = sorted(p.stem for p in gt.glob("*.png"))
    second = root / "second"
    rng = np.random.default_rng(1)
    for i, name in enumerate(names):
        if i in SKIPPED:
            continue
        m = read_mask(gt / f"{name}.png").copy()
        m[m == 255] = 0
        y, x = rng.integers(0, 40), rng.integers(0, 50)
        m[y : y + 24, x : x + 24] = rng.integers(0, 6)
        if i in HEAVY:
            m[: int(0.6 * m.shape[0])] = 255
        save_mask_png(second / f"{name}.png", m)
    return {"root": root, "data": data, "gt": gt, "seeds": data / "SeedMasks", "second": second, "names": names}


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    rep = make_report(
        dataset["gt"], [dataset["seeds"], dataset["second"]], out, gallery=3, thumb=64, progress_options={"mode": "off"}
    )
    return rep


class _Cells(html.parser.HTMLParser):
    """Text of the table cells with a given class, keyed by (row data-run/data-class, cell data-run)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict[str, str], dict[str, str], str]] = []  # (row attrs, cell attrs, text)
        self.row: dict[str, str] = {}
        self.cell: dict[str, str] | None = None
        self.text = ""
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "tr":
            self.row = a
        elif tag == "td":
            self.cell, self.text = a, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None:
            self.cells.append((self.row, self.cell, self.text.strip()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.text += data

    def find(self, cls: str) -> list[tuple[dict[str, str], dict[str, str], str]]:
        return [c for c in self.cells if cls in c[1].get("class", "").split()]


def _parse(index: Path) -> _Cells:
    p = _Cells()
    p.feed(index.read_text())
    return p


# ----------------------------------------------------------------------------------------------------------------
# numbers


def test_confusion_is_the_evaluation_count():
    """The per-image function is what ConfusionMatrix adds up (one count), and the metrics of its sum are compute()'s."""
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(4)
    total = np.zeros((4, 5), np.int64)
    for _ in range(3):
        gt = rng.integers(0, 4, (9, 7)).astype(np.uint8)
        gt[0] = 255
        pred = rng.integers(0, 4, (9, 7)).astype(np.uint8)
        pred[:, 0] = 255
        cm.update(pred, gt)
        total += confusion(pred, gt, 4)
    np.testing.assert_array_equal(cm.matrix, total)
    a, b = cm.compute(), metrics_from_matrix(total)
    np.testing.assert_allclose(a.iou, b.iou)
    assert (a.miou, a.pixel_acc, a.unknown) == (b.miou, b.pixel_acc, b.unknown)


def test_page_numbers_match_evaluate(dataset, report):
    names, gt = dataset["names"], dataset["gt"]
    saved = json.loads((report.index.parent / "report.json").read_text())
    cells = _parse(report.index)
    K = len(report.class_names)
    assert K == 6 and saved["class_names_from"].endswith("class_names.txt")
    for r, run in enumerate([dataset["seeds"], dataset["second"]]):
        present = [n for n in names if (run / f"{n}.png").is_file()]
        ref, n = evaluate_dirs(run, gt, K, present)
        got = saved["runs"][r]
        assert got["images_scored"] == n == len(names) - (len(SKIPPED) if r else 0)
        assert got["gt_without_mask"] == (len(SKIPPED) if r else 0)
        assert got["miou"] == pytest.approx(ref.miou, abs=1e-12)
        assert got["pixel_acc"] == pytest.approx(ref.pixel_acc, abs=1e-12)
        assert got["unknown"] == pytest.approx(ref.unknown, abs=1e-12)
        np.testing.assert_allclose([c["iou"] for c in got["per_class"]], ref.iou, atol=1e-12)
        if r == 0:  # every image: the GT pixel counts of the whole list
            assert saved["gt_pixels"] == ref.gt_pixels.tolist()
            gt_cells = {int(c[0]["data-class"]): c[2] for c in cells.find("gt-pixels")}
            assert gt_cells == {c: str(int(ref.gt_pixels[c])) for c in range(K)}
        # the page shows the same values, in %, 2 decimals
        [miou_cell] = [c for c in cells.find("miou") if c[0].get("data-run") == str(r)]
        assert miou_cell[2] == f"{100 * ref.miou:.2f}"
        [acc_cell] = [c for c in cells.find("pixel-acc") if c[0].get("data-run") == str(r)]
        assert acc_cell[2] == f"{100 * ref.pixel_acc:.2f}"
        iou_cells = {int(c[0]["data-class"]): c[2] for c in cells.find("iou") if c[1].get("data-run") == str(r)}
        assert iou_cells == {c: f"{100 * ref.iou[c]:.2f}" for c in range(K)}
    # coverage: missing masks and ignore-heavy masks of the second run
    missing = [c[2] for c in cells.cells if c[0].get("data-run") == "1" and "GT images" not in c[2]]
    assert any(c.startswith(f"{len(SKIPPED)} of {len(names)}: ") for c in missing)
    assert saved["runs"][1]["ignore_heavy"] == len(HEAVY)
    assert saved["runs"][0]["ignore_heavy"] == sum(
        (read_mask(dataset["seeds"] / f"{n}.png") == 255).mean() > 0.5 for n in names
    )


def test_gallery_picks_by_per_image_miou(dataset, report):
    """Gained / lost / worst images are the extremes of each image's own mIoU (evaluate on that image alone)."""
    names, gt = dataset["names"], dataset["gt"]
    per = {}
    for n in names:
        a = evaluate_dirs(dataset["seeds"], gt, 6, [n])[0].miou
        b = evaluate_dirs(dataset["second"], gt, 6, [n])[0].miou if (dataset["second"] / f"{n}.png").is_file() else None
        per[n] = (a, b)
    both = {n: b - a for n, (a, b) in per.items() if b is not None}
    gain = sorted((n for n in both if both[n] > 0), key=lambda n: -both[n])[:3]
    lose = sorted((n for n in both if both[n] < 0), key=lambda n: both[n])[:3]
    worst = sorted((n for n in both), key=lambda n: per[n][1])[:3]
    rows = json.loads((report.index.parent / "report.json").read_text())["gallery"]
    by_section = {s: [r["image"] for r in rows if r["section"] == s] for s in ("gain", "lose", "worst")}
    assert by_section == {"gain": gain, "lose": lose, "worst": worst}
    for r in rows:
        assert r["miou"][0] == pytest.approx(per[r["image"]][0], abs=1e-12)
    page = report.index.read_text()
    assert page.count('class="gallery-row"') == len(rows)
    # every referenced file exists, each gallery image's thumbnails are written once
    srcs = [t[1]["src"] for t in _parse(report.index).tags if t[0] == "img"]
    assert srcs and all((report.index.parent / s).is_file() for s in srcs)
    thumbs = {s for s in srcs if s.endswith(".jpg")}
    assert len(thumbs) == 4 * len({r["image"] for r in rows})  # image, GT, two runs
    assert sorted(p.name for p in (report.index.parent / "assets").iterdir()) == sorted({Path(s).name for s in srcs})


def test_unused_class_slots_are_left_out(tmp_path):
    """COCO's 91 slots: only the classes in the GT or a run get a row, a bar and a confusion-matrix line."""
    gt, run = tmp_path / "gt", tmp_path / "run"
    a = np.zeros((20, 30), np.uint8)
    a[2:10, 3:12] = 1  # person
    a[12:18, 5:25] = 62  # chair
    b = a.copy()
    b[12:18, 5:15] = 90  # toothbrush predicted where the GT has a chair
    save_mask_png(gt / "x.png", a)
    save_mask_png(run / "x.png", b)
    rep = make_report(
        gt, [run], tmp_path / "out", class_names=COCO_OFFICIAL91_CLASSES, progress_options={"mode": "off"}
    )
    assert rep.shown_classes == [0, 1, 62, 90]
    rows = [c for c in _parse(rep.index).find("iou")]
    assert sorted({int(c[0]["data-class"]) for c in rows}) == [0, 1, 62, 90]
    assert "87 class slot(s) with no pixel" in rep.index.read_text()
    assert (rep.index.parent / "assets" / "confusion_0.png").stat().st_size > 0


def test_run_settings_from_config_files(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generate_config.json").write_text(
        json.dumps(
            {
                "settings": {
                    "model_sha256": "ab" * 32,
                    "engine": "onnxruntime",
                    "precision": "fp32",
                    "scales": [0.5, 1.0],
                    "flip": True,
                    "crf": "voc",
                    "labels_sha256": "cd" * 32,
                },
                "args": {"model": "runs/x/weakclip.onnx", "image_root": str(tmp_path)},
                "engine": {"engine": "onnxruntime", "class_names": ["background", "cat"]},
            }
        )
    )
    info = describe_run(gen)
    assert info.name == "onnxruntime fp32, 4 view(s), CRF voc, labels"
    assert info.settings["model sha256"] == "ab" * 6 and info.settings["views"] == "4 (scales 0.5,1 × flip)"
    assert info.settings["model"] == "weakclip.onnx" and info.image_root == tmp_path
    seeds = tmp_path / "ClipSeeds"
    seeds.mkdir()
    (seeds / "seeds_config.json").write_text(
        json.dumps(
            {
                "settings": {
                    "preset": "vit_b16",
                    "clip_weights": "openai",
                    "class_names": ["background", "cat"],
                    "options": {"scales": [1.0], "flip": False, "crf": {"sxy": 3}, "ignore_threshold": 0.95},
                },
                "args": {"images": "nowhere/list.txt", "image_root": None},
            }
        )
    )
    info = describe_run(seeds)
    assert (info.name, info.kind, info.image_root) == ("CLIP-ES seeds (vit_b16)", "seeds", None)
    assert info.settings["views"] == "1 (scales 1)" and info.settings["CRF"] == "CLIP-ES, 255 below 0.95"
    plain = tmp_path / "SeedMasks"
    plain.mkdir()
    assert describe_run(plain).name == "SeedMasks" and describe_run(plain).kind == "masks"


def test_command_line_and_errors(dataset, tmp_path, capsys):
    gt, seeds, second = str(dataset["gt"]), str(dataset["seeds"]), str(dataset["second"])
    out = tmp_path / "cli"
    assert (
        main(
            [
                "--gt",
                gt,
                seeds,
                second,
                "--out",
                str(out),
                "--names",
                "seeds,masks",
                "--gallery",
                "1",
                "--progress-mode",
                "off",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"report: {out / 'index.html'} (") and lines[0].startswith("seeds ")
    assert json.loads((out / "report.json").read_text())["runs"][1]["name"] == "masks"

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    assert "--gt" in error([seeds, "--out", str(out)])  # argparse's own mistakes: one line too
    assert "--out" in error(["--gt", gt, seeds, second, "--out", second])
    assert "--out" in error(["--gt", gt, seeds, "--out", gt])
    assert "--names gives 1 name(s) for 2 run(s)" in error(
        ["--gt", gt, seeds, second, "--out", str(out), "--names", "a"]
    )
    assert str(tmp_path / "nope") in error(["--gt", gt, str(tmp_path / "nope"), "--out", str(out)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: none of the" in error(["--gt", gt, str(empty), "--out", str(out)])
    (tmp_path / "list.txt").write_text("train_000000\nno_such_image\n")
    assert "no_such_image" in error(["--gt", gt, seeds, "--out", str(out), "--list", str(tmp_path / "list.txt")])
    bad = tmp_path / "bad"
    save_mask_png(bad / f"{dataset['names'][0]}.png", np.full((64, 80), 9, np.uint8))
    assert f"{bad / dataset['names'][0]}.png" in error(["--gt", gt, str(bad), "--out", str(out)])


# ----------------------------------------------------------------------------------------------------------------
# the page in a real browser

CHROMIUM = os.environ.get("WEAKCLIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


class Browser:
    """Headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages ending
    in NUL: commands on the browser's fd 3, replies and events on its fd 4); a new empty profile per instance."""

    def __init__(self, exe: str = CHROMIUM, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="weakclip-chromium-")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        # above 3 and 4, so that placing them there in the child cannot overwrite one with the other
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
        for fd in (cmd_r, out_w):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=child_fds,  # Python's own descriptors are not inherited (PEP 446)
        )
        os.close(hi_r)
        os.close(hi_w)
        self.cmd = os.fdopen(cmd_w, "wb", buffering=0)
        self.out = os.fdopen(out_r, "rb", buffering=0)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := self.out.read(1 << 16):
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                self.messages.put(json.loads(m))
        self.messages.put(None)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """One command; returns its result (events that arrive meanwhile are kept in ``events``)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.cmd.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._next(deadline, method)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str | None = None) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._next(deadline, method)
            self.events.append(m)
            if m.get("method") == method and m.get("sessionId") == session:
                return m

    def _next(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            m = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise TimeoutError(f"chromium: no answer to {what} in {self.timeout:.0f} s") from None
        if m is None:
            err = b"".join(self.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"chromium closed the pipe during {what}; stderr:\n{err}")
        return m

    def open(self, url: str, width: int = 1280, height: int = 900) -> str:
        """A new tab showing ``url``, loaded (the load event: every image fetched and decoded); its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.send("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (the browser's error log) of the page so far."""
        out = []
        for e in self.events:
            if e.get("sessionId") != session:
                continue
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, session: str, path: Path, max_height: int | None = None) -> tuple[int, int]:
        """PNG of the whole page (or its top ``max_height`` pixels); returns (width, height) of the page."""
        import base64

        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        w, h = int(size["width"]), int(size["height"])
        clip_h = h if max_height is None else min(h, max_height)
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": w, "height": clip_h, "scale": 1},
            },
            session,
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return w, h

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.cmd, self.out):
            with contextlib.suppress(OSError):
                f.close()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_CHECK = """(() => ({
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth})),
  chart: document.querySelectorAll('img#iou-chart').length,
  confusion: document.querySelectorAll('img.confusion').length,
  tables: [...document.querySelectorAll('table')].map(t => t.className),
  perClassRows: document.querySelectorAll('table.per-class tr[data-class]').length,
  galleryRows: document.querySelectorAll('.gallery-row').length,
  scripts: document.scripts.length,
}))()"""


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) for the browser test"
        )
    b = Browser()
    yield b
    b.close()


def test_page_renders_in_chromium(browser, report, tmp_path):
    session = browser.open(report.index.resolve().as_uri())
    page = browser.evaluate(session, PAGE_CHECK)
    assert browser.errors(session) == []
    assert page["images"], "no images on the page"
    bad = [i for i in page["images"] if not i["complete"] or i["w"] <= 0]
    assert bad == [], f"images not decoded: {bad}"
    n_runs, n_rows = len(report.runs), len(json.loads((report.index.parent / "report.json").read_text())["gallery"])
    assert page["chart"] == 1 and page["confusion"] == n_runs
    assert {"settings", "scores", "per-class", "coverage"} <= set(page["tables"])
    assert page["perClassRows"] == len(report.shown_classes) and page["galleryRows"] == n_rows > 0
    assert page["scripts"] == 0  # the product page has no script
    shot = tmp_path / "page.png"
    w, h = browser.screenshot(session, shot)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (w, h) and w >= 1000 and h > 1000
        assert len(im.getcolors(1 << 20) or range(1 << 20)) > 50  # a rendered page, not a blank canvas


def test_browser_reports_a_broken_image(browser, tmp_path):
    """The check above can fail: a page with a missing picture shows up as an error and a zero naturalWidth."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png" alt="x"></body></html>')
    session = browser.open(page.as_uri())
    images = browser.evaluate(session, PAGE_CHECK)["images"]
    assert images[0]["w"] == 0
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in browser.errors(session))


if __name__ == "__main__":  # python tests/test_report.py PAGE.html OUT.png [HEIGHT]
    b = Browser()
    try:
        s = b.open(Path(sys.argv[1]).resolve().as_uri())
        if b.errors(s):
            sys.exit(f"page errors: {b.errors(s)}")
        print(b.screenshot(s, Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None))
    finally:
        b.close()
