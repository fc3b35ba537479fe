"""weakclip generate: pseudo masks for a whole image set with any engine (SPEC §5), batched multi-view inference
(:func:`weakclip.masks.inference.predict_probs`) in the frame of :func:`weakclip.masks.batch.run_batch`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakclip.data.io import FolderLock, file_sha256
from weakclip.data.labels import load_labels
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
from weakclip.masks import batch
from weakclip.masks.inference import InferenceOptions, postprocess, predict_probs
from weakclip.model.config import DEFAULT_SCALES, scales_from
from weakclip.progress import print_startup

RECORD = "generate_config.json"
_NOT_LABELS = "not a label file (JSON, text 'name idx ...' or cls_labels.npy)"


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
    try:
        return load_labels(path, num_classes)
    except (OSError, ValueError) as e:
        fixed = {FileNotFoundError: "no such file", UnicodeDecodeError: _NOT_LABELS}
        msg = fixed.get(type(e), str(e))
        raise UsageError(msg if msg.startswith(str(path)) else f"--labels {path}: {msg}") from None


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
) -> batch.Summary:
    """Pseudo masks for ``images`` (a folder or a list file) into ``out``.  Every check that needs no model runs
    first; the engine is built only when there is work.  Raises :class:`UsageError` for bad inputs,
    :class:`RuntimeFailure` when images failed, :class:`~weakclip.errors.OutputError` at a fatal write."""
    if run.threads:
        torch.set_num_threads(run.threads)
    out = Path(out)
    all_items = batch.read_inputs(images, image_root, ext)
    given = engine if isinstance(engine, Engine) else None
    spec = engine if isinstance(engine, EngineSpec) else EngineSpec()
    outputs = batch.Outputs(out, masks.save_probs, masks.probs_dtype, record=RECORD)
    batch.check_out_location(out, images, all_items, outputs, {"--model": spec.model, "--labels": labels})
    if masks.crf != "none":
        batch.require_pydensecrf(f"--crf {masks.crf} needs pydensecrf (pip install pydensecrf2, or the [train] extra)")
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
    inputs = {"images": images, "image_root": image_root, "ext": ext, "model": spec.model, "labels": labels, "out": out}
    record_args = {k: v and str(v) for k, v in inputs.items()} | asdict(masks) | asdict(run)
    del record_args["shard"]
    samples = batch.overlay_names(all_items, run.overlays)

    def write(item: batch.Item, image: np.ndarray, probs: Any) -> None:
        pred = postprocess(image, probs, image_labels[item.name] if image_labels is not None else None, masks.crf)
        outputs.write(item.name, image, pred.mask, pred.probs, masks.palette, item.name in samples)

    def infer(
        eng: Engine, opts: InferenceOptions, job: batch.BatchJob, chunk: list[tuple[batch.Item, np.ndarray]]
    ) -> None:
        try:
            probs = predict_probs(eng, [img for _, img in chunk], opts)
        except Exception as e:  # noqa: BLE001 - retried one by one to find the image at fault
            if len(chunk) > 1:
                for one in chunk:
                    infer(eng, opts, job, [one])
            else:
                job.fail_compute(chunk[0][0], f"inference: {batch.one_line(e)}", "inference", EngineError)
            return
        for (item, image), p in zip(chunk, probs):
            job.write(item, "writing outputs", write, item, image, p)

    def work(todo: list[batch.Item], skipped: int, lock: FolderLock) -> tuple[int, list[tuple[str, str]]]:
        eng = given if given is not None else get_engine(engine_name, spec.model, **dict(spec.options))
        try:
            if image_labels is not None:
                K = eng.num_classes
                for it in todo:
                    bad = [c for c in image_labels[it.name] if not 1 <= c < K]
                    if bad:
                        raise UsageError(
                            f"--labels {labels}: image {it.name!r} has class {bad} outside 1..K-1 (K = {K})"
                        )
            geometry = {k: getattr(masks, k) for k in ("crop", "stride", "base_size", "max_long", "scales", "flip")}
            opts = InferenceOptions.for_engine(eng, **geometry, max_batch=run.batch, device=run.tta_device)
            d = eng.describe()
            batch.write_record(outputs, settings, args=record_args, engine=d, inference=opts.to_dict())
            scales = ",".join(f"{r:g}" for r in opts.scales)
            print_startup(
                "generate",
                engine=d.get("engine", eng.name),
                model=spec.model,
                precision=d.get("precision", spec.options.get("precision") or "default"),
                views=f"{opts.num_views} (scales {scales}{' × flip' if opts.flip else ''}, crop {opts.crop}/stride {opts.stride})",
                crf=masks.crf,
                device=d.get("device", "cpu"),
                threads=torch.get_num_threads(),
                note=f"{len(todo)} image(s) to do, {skipped} already finished",
            )
            depth = 2 * max(run.workers, 1) + run.chunk
            with batch.BatchJob(len(todo), run.workers, "generate", run.progress, depth, lock) as job:
                for chunk in job.chunks(todo, run.chunk):
                    infer(eng, opts, job, chunk)
                job.collect(0)
            return job.done, job.failures
        finally:
            if given is None:
                eng.close()

    return batch.run_batch(
        "weakclip generate", all_items, outputs, settings, work, overwrite=run.overwrite, shard=run.shard, noun="masks"
    )
