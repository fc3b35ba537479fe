"""weakclip generate: pseudo masks for a whole image set with any engine (SPEC §5).

    weakclip generate --images VOC2012/JPEGImages --out masks --model runs/voc/final.safetensors \\
        [--engine torch|onnxruntime|tensorrt] [--scales official --flip] [--labels cls_labels.json] [--crf voc]

:func:`generate` is the library entry (typed options, the project's exceptions); :func:`main` only parses.
Decoding threads prefetch images → batched multi-view sliding-window inference on the engine
(:func:`weakclip.masks.inference.predict_probs`) → writing threads do label masking, the optional CRF and the atomic writes
(``probs/<name>.npy`` (K, H, W), ``overlays/<name>.png``, and last the mask ``<name>.png``, which marks the image
finished).  The frame around it (owned output folder, resume check against ``generate_config.json``, shards,
failures file, fatal stops, summary) is :func:`weakclip.masks.batch.run_batch`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from weakclip.data.io import FolderLock, atomic_path, file_sha256, save_mask_png
from weakclip.engines.base import (
    Engine,
    EngineError,
    auto_engine,
    available_engines,
    check_engine_options,
    check_model_file,
    get_engine,
)
from weakclip.errors import UsageError
from weakclip.masks.batch import (
    BatchJob,
    Item,
    Outputs,
    Summary,
    check_out_location,
    list_inputs,
    make_overlay,
    one_line,
    overlay_names,
    run_batch,
    unsupported_files,
    write_record,
)
from weakclip.masks.inference import InferenceOptions, postprocess, predict_probs
from weakclip.model.config import DEFAULT_SCALES, scales_from

_MAX_CONSECUTIVE_INFERENCE_FAILURES = 10
RECORD = "generate_config.json"


@dataclass(frozen=True)
class MaskOptions:
    """What decides a mask: recorded in ``generate_config.json``; a resume with other values is refused."""

    scales: tuple[float, ...] = DEFAULT_SCALES  # view ratios ("official" = the paper's 6)
    flip: bool = False  # add horizontally flipped views (official: on)
    crop: int | None = None  # sliding-window size (None: the engine's crop c)
    stride: int | None = None  # window stride (None: round(2c/3))
    base_size: int | None = None  # short side of the ratio-1 view (None: c)
    max_long: int | None = None  # long-side limit of the ratio-1 view (None: 4 × base size)
    crf: str = "none"  # none | voc | coco (the official make_crf parameters)
    palette: bool = True  # palette PNGs (VOC colours) rather than plain L
    save_probs: bool = False  # also write probs/<name>.npy (K, H, W)
    probs_dtype: str = "float16"  # float16 | float32 (the official .npy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", scales_from(self.scales))
        if self.crf not in ("none", "voc", "coco"):
            raise UsageError(f"--crf must be none, voc or coco, got {self.crf!r}")


@dataclass(frozen=True)
class RunOptions:
    """How the work is done (not recorded: changing it never changes a mask)."""

    batch: int = 16  # windows per engine call
    chunk: int = 4  # images whose windows are batched together
    workers: int = 4  # decoding and writing threads (0 = inline)
    tta_device: str = "cpu"  # where views are resized and merged
    overlays: int = 0  # colour overlays for this many sample images
    progress: bool = True  # progress bar / lines
    overwrite: bool = False  # redo finished images, also under other settings
    shard: tuple[int, int] | None = None  # (i, N); None: RANK/WORLD_SIZE or the whole list
    threads: int | None = None  # torch intra-op threads

    def __post_init__(self) -> None:
        for name in ("batch", "chunk"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1")


@dataclass(frozen=True)
class EngineSpec:
    """Which engine runs the model: a name (``auto`` picks it from the model file) and its options."""

    model: str | None = None  # checkpoint, .onnx or TensorRT plan
    engine: str = "auto"  # auto | torch | onnxruntime | tensorrt | a registered name | module:Factory
    options: Mapping[str, Any] = field(default_factory=dict)  # device, precision, ... (the engine's keywords)

    def resolved_name(self) -> str:
        if self.engine != "auto":
            if self.engine not in available_engines() and ":" not in self.engine:
                raise UsageError(f"--engine {self.engine}: unknown engine; choose auto or one of {available_engines()}")
            return self.engine
        if not self.model:
            raise UsageError(
                "--engine auto needs --model (a .safetensors checkpoint, an .onnx model or a TensorRT plan)"
            )
        return auto_engine(self.model)


def _check_crf_available(crf: str) -> None:
    if crf == "none":
        return
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--crf {crf} needs pydensecrf (pip install pydensecrf2, or the [train] extra): {e}") from None


def _model_class_names(model: str | None, engine_name: str) -> list[str] | None:
    """The class names recorded in the model file (checkpoint or ONNX metadata), read without loading the model;
    None where the file records none (a TensorRT plan, a custom engine)."""
    if not model:
        return None
    try:
        if engine_name == "torch":
            from weakclip.model.checkpoint import read_checkpoint_metadata

            names = read_checkpoint_metadata(model).get("class_names")
        elif engine_name in ("onnxruntime", "tensorrt") and Path(model).suffix.lower() == ".onnx":
            from weakclip.engines.ort_engine import read_onnx_metadata

            names = read_onnx_metadata(model).get("class_names")
        else:
            return None
        return list(json.loads(names)) if names else None
    except (OSError, ValueError, RuntimeError):
        return None  # the engine's own loading reports what is wrong with the file


def read_image_labels(path: str | os.PathLike, num_classes: int | None) -> dict[str, list[int]]:
    """``--labels`` read for a ``num_classes``-class model (vector length and indices checked), as one usage line."""
    from weakclip.data.labels import load_labels

    try:
        return load_labels(path, num_classes)
    except FileNotFoundError:
        raise UsageError(f"--labels {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--labels {path}: not a label file (JSON, text 'name idx ...' or cls_labels.npy)") from None
    except (OSError, ValueError) as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(str(path)) else f"--labels {path}: {msg}") from None


def _write_outputs(
    outputs: Outputs,
    item: Item,
    image: np.ndarray,
    probs: Any,
    labels: Sequence[int] | None,
    crf: str | None,
    palette: bool,
    overlay: bool,
) -> None:
    pred = postprocess(image, probs, labels, crf)
    if outputs.save_probs:
        with atomic_path(outputs.probs(item.name)) as tmp, open(tmp, "wb") as f:
            np.save(f, pred.probs.astype(outputs.probs_dtype))  # (K, H, W)
    if overlay:
        with atomic_path(outputs.overlay(item.name)) as tmp:
            Image.fromarray(make_overlay(image, pred.mask)).save(tmp, format="PNG")
    save_mask_png(outputs.mask(item.name), pred.mask, palette=palette)  # last: marks the image finished


def generate(
    images: str | os.PathLike,
    out: str | os.PathLike,
    engine: EngineSpec | Engine,
    *,
    image_root: str | os.PathLike | None = None,
    ext: str = ".jpg",
    labels: str | os.PathLike | None = None,
    masks: MaskOptions = MaskOptions(),
    run: RunOptions = RunOptions(),
) -> Summary:
    """Pseudo masks for ``images`` (a folder or a list file) into ``out``.

    Every check that needs no model runs first (inputs, output location, labels against the model file's class
    count, a resume's settings); the engine is built only when there is work.  Raises :class:`UsageError` for bad
    inputs, :class:`RuntimeFailure` when images failed (after writing the rest and the failures file),
    :class:`~weakclip.errors.OutputError` at a write no later image could avoid.
    """
    if run.threads:
        import torch

        torch.set_num_threads(run.threads)
    out = Path(out)
    all_items = list_inputs(images, image_root, ext)
    odd = unsupported_files(images)
    if odd:
        listing = ", ".join(f"{n} × {suffix}" for suffix, n in sorted(odd.items()))
        print(f"{images}: {sum(odd.values())} file(s) are not images and are not read ({listing})")
    given = engine if isinstance(engine, Engine) else None
    spec = engine if isinstance(engine, EngineSpec) else EngineSpec()
    outputs = Outputs(out, masks.save_probs, masks.probs_dtype, record=RECORD)
    check_out_location(out, images, all_items, outputs, {"--model": spec.model, "--labels": labels})
    _check_crf_available(masks.crf)
    if given is not None:
        engine_name = given.name or type(given).__name__
    else:  # the wrong kind of model file or an unknown option: refused before anything is written
        engine_name = spec.resolved_name()
        check_model_file(engine_name, spec.model)
        check_engine_options(engine_name, dict(spec.options))
    image_labels: dict[str, list[int]] | None = None
    if labels is not None:
        names = given.class_names if given is not None else _model_class_names(spec.model, engine_name)
        image_labels = read_image_labels(labels, len(names) if names else None)
        missing = [it.name for it in all_items if it.name not in image_labels]
        if missing:
            raise UsageError(f"--labels {labels}: no image-level label for {len(missing)} image(s), e.g. {missing[:5]}")
    settings = {
        "model_sha256": file_sha256(spec.model) if spec.model else None,
        "engine": engine_name,
        "precision": spec.options.get("precision") or "engine default",
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(masks).items() if k != "probs_dtype"},
        "labels_sha256": file_sha256(labels, with_data=False) if labels is not None else None,
        "probs_dtype": masks.probs_dtype if masks.save_probs else None,
    }
    record_args = {"images": str(images), "image_root": image_root and str(image_root), "ext": ext,
                   "model": spec.model, "labels": labels and str(labels), "out": str(out), **asdict(masks),
                   **{k: v for k, v in asdict(run).items() if k != "shard"}}  # fmt: skip
    samples = overlay_names(all_items, run.overlays)

    def work(todo: list[Item], skipped: int, lock: FolderLock) -> tuple[int, list[tuple[str, str]]]:
        eng = given if given is not None else get_engine(engine_name, spec.model, **dict(spec.options))
        try:
            if image_labels is not None:
                for it in todo:
                    bad = [c for c in image_labels[it.name] if not 1 <= c < eng.num_classes]
                    if bad:
                        raise UsageError(f"--labels {labels}: image {it.name!r} has class {bad} outside 1..K-1 "
                                         f"(K = {eng.num_classes})")  # fmt: skip
            opts = InferenceOptions.for_engine(
                eng, crop=masks.crop, stride=masks.stride, base_size=masks.base_size, max_long=masks.max_long,
                scales=masks.scales, flip=masks.flip, max_batch=run.batch, device=run.tta_device,
            )  # fmt: skip
            write_record(outputs, settings, args=record_args, engine=eng.describe(), inference=opts.to_dict())
            _startup_line(eng, spec, opts, masks.crf, len(todo), skipped)
            return _generate(eng, opts, todo, outputs, image_labels, samples, masks, run, lock)
        finally:
            if given is None:
                eng.close()

    return run_batch("weakclip generate", all_items, outputs, settings, work, overwrite=run.overwrite,
                     shard=run.shard, noun="masks")  # fmt: skip


def _startup_line(engine: Engine, spec: EngineSpec, opts: InferenceOptions, crf: str, todo: int, skipped: int) -> None:
    import torch

    from weakclip.progress import print_startup

    d = engine.describe()
    scales = ",".join(f"{r:g}" for r in opts.scales)
    print_startup(
        "generate",
        engine=d.get("engine", engine.name),
        model=spec.model,
        precision=d.get("precision", spec.options.get("precision") or "default"),
        views=f"{opts.num_views} (scales {scales}{' × flip' if opts.flip else ''}, crop {opts.crop}/stride {opts.stride})",
        crf=crf,
        device=d.get("device", "cpu"),
        threads=torch.get_num_threads(),
        note=f"{todo} image(s) to do, {skipped} already finished",
    )


def _generate(
    engine: Engine,
    opts: InferenceOptions,
    todo: Sequence[Item],
    outputs: Outputs,
    labels: dict[str, list[int]] | None,
    overlays: set[str],
    masks: MaskOptions,
    run: RunOptions,
    lock: FolderLock | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    depth = 2 * max(run.workers, 1) + run.chunk
    job = BatchJob(len(todo), run.workers, "generate", run.progress, max_pending_writes=depth, lock=lock)
    consecutive_inference_failures = 0
    crf = None if masks.crf == "none" else masks.crf

    def infer(batch: list[tuple[Item, np.ndarray]]) -> None:
        nonlocal consecutive_inference_failures
        try:
            results = list(zip(batch, predict_probs(engine, [img for _, img in batch], opts)))
        except Exception:  # noqa: BLE001 - retry one by one to find the image at fault
            if len(batch) == 1:
                results = []
                _record_inference_failure(batch[0][0], sys.exc_info()[1])
            else:
                for one in batch:
                    infer([one])
                return
        for (item, image), probs in results:
            consecutive_inference_failures = 0
            lab = labels[item.name] if labels is not None else None
            job.write(item, "writing outputs", _write_outputs, outputs, item, image, probs, lab, crf, masks.palette,
                      item.name in overlays)  # fmt: skip

    def _record_inference_failure(item: Item, e: BaseException | None) -> None:
        nonlocal consecutive_inference_failures
        job.fail(item, f"inference: {one_line(e) if e else 'unknown error'}")
        consecutive_inference_failures += 1
        if consecutive_inference_failures >= _MAX_CONSECUTIVE_INFERENCE_FAILURES:
            raise EngineError(
                f"inference failed on {consecutive_inference_failures} images in a row; last: {job.failures[-1][1]}"
            )

    with job:
        batch: list[tuple[Item, np.ndarray]] = []
        for item, image, reason in job.images(todo, depth):
            if image is None:
                job.fail(item, reason or "unreadable")
                continue
            batch.append((item, image))
            if len(batch) == run.chunk:
                infer(batch)
                batch = []
        if batch:
            infer(batch)
        job.collect(0)
    return job.done, job.failures


# ----------------------------------------------------------------------------------------------------------------
# command line
