"""Train WeakCLIP on CAM seeds (one process, or DDP under torchrun: gloo on CPU, nccl on GPU).

Outputs in work_dir: see ``OUTPUTS`` (checkpoints are written atomically).  A non-empty work_dir is refused unless
``--resume`` (continue from ``last.pt``, exactly: optimiser, scaler, RNG state, sample order; log rows after it are
dropped) or ``--overwrite`` (delete this program's outputs first, nothing else).  A resume is refused when the config
differs in anything but ``RESUME_MAY_CHANGE``, when the training list or class names differ, or when the run is
already at ``train.iters``.  Inputs are checked before anything is written (a run failing then leaves no work_dir).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import yaml

import weakclip
from weakclip.data.datasets import SegmentationDataset, collate, resolve_list
from weakclip.data.io import atomic_path, read_image, read_mask, removed_if_left_empty, write_text_atomic
from weakclip.data.labels import load_labels
from weakclip.data.metrics import ConfusionMatrix
from weakclip.errors import ArgumentParser, UsageError, cli
from weakclip.masks.inference import InferenceOptions, predict
from weakclip.model.config import get_config
from weakclip.model.losses import WeakCLIPLoss
from weakclip.progress import progress as progress_meter
from weakclip.progress import setup_logging
from weakclip.training.config import DEFAULT_CONFIG, TrainConfig, config_help, read_config

logger = logging.getLogger("weakclip.training")

# What this program writes into work_dir (``--overwrite`` deletes these and its temporaries, nothing else).
_MODEL_FILES = ("best.safetensors", "final.safetensors", "text_embeddings.safetensors")
OUTPUTS = ("config.yaml", "last.pt", *_MODEL_FILES, "log.csv", "val.csv")

# Config keys a --resume may change (dotted; "schedule.*" = the whole section).  Everything else (model, data
# lists/folders/labels, losses, optimiser and schedule shape, seed, batch size) must equal the recorded run.
RESUME_MAY_CHANGE = ("train.iters", "schedule.*", "data.num_workers", "data.root", "device", "work_dir")


def load_config(path: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` holds): :func:`read_config`'s, for check-data."""
    return read_config(path, overrides).to_dict()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():  # an empty mapping contributes no key
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _may_change(key: str) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in RESUME_MAY_CHANGE)


def _shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "<unset>"


def config_differences(recorded: dict, current: dict) -> list[str]:
    """``key recorded → current`` for every key that differs and may not change on resume."""
    a, b = _flatten(recorded), _flatten(current)
    return [
        f"{key} {_shown(a, key)} → {_shown(b, key)}"
        for key in sorted(set(a) | set(b))
        if not _may_change(key) and not (key in a and key in b and a[key] == b[key])
    ]


def our_files(work: Path) -> list[Path]:
    """This program's outputs present in ``work`` (and temporaries of a killed write)."""
    return [work / f for f in OUTPUTS if (work / f).exists()] + sorted(work.glob(".*.tmp*"))


def check_work_dir(work: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a non-empty work_dir unless --resume or --overwrite (read-only: safe to call on every rank)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the run or start it again")
    if work.exists() and not work.is_dir():
        raise UsageError(f"{work}: work_dir is a file; expected a folder")
    if resume or overwrite or not work.is_dir():
        return
    present = sorted(p.name for p in work.iterdir())
    if not present:
        return
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    if our_files(work):
        raise UsageError(
            f"{work}: work_dir already holds a training run ({shown}); pass --resume to continue it or "
            "--overwrite to start again (deletes this program's outputs there)"
        )
    raise UsageError(f"{work}: work_dir is not empty ({shown}); choose a new or empty folder")


def data_fingerprint(names: Sequence[str], class_names: Sequence[str]) -> str:
    """sha256 of the training list (in order) and the class names: what a resume must train on."""
    return hashlib.sha256(json.dumps([list(names), list(class_names)]).encode()).hexdigest()


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda requested but no CUDA GPU is available")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up from lr·warmup_ratio to lr, then cosine from lr to min_lr at ``iters``."""
    t = cfg.train
    lr, warm, total = t.lr, t.warmup_iters, t.iters
    if it < warm:
        r = t.warmup_ratio
        return lr * (r + (1 - r) * it / max(warm, 1))
    progress = (it - warm) / max(total - warm, 1)
    return t.min_lr + 0.5 * (lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_indices(n: int, seed: int, start: int, count: int, rank: int, world: int) -> list[int]:
    """Indices ``start .. start+count`` of this rank's slice of an endless stream of seeded epoch permutations
    (deterministic in the position: a resumed run continues the exact sample order)."""

    def at(pos: int) -> int:  # pos: a global position in the stream
        epoch, offset = divmod(pos, n)
        return int(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))[offset])

    return [at((start + i) * world + rank) for i in range(count)]


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = cast("tuple[Any, ...]", np.random.get_state())  # the legacy tuple (default)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: Path, model, optimizer, scaler, it: int, best: float, config: dict[str, Any], data_sha256: str = ""
) -> None:
    """``config``: :meth:`TrainConfig.to_dict` (what a --resume compares with)."""
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "iteration": it,
        "best_miou": best,
        "rng": rng_state(),
        "config": json.dumps(config),
        "data_sha256": data_sha256,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_text_embeddings(model, path: Path) -> None:
    from safetensors.torch import save_file

    model.eval()
    with torch.no_grad():
        T = model.text_embeddings().float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file({"text_embeddings": T}, str(tmp), metadata={"class_names": json.dumps(list(model.class_names))})


@torch.no_grad()
def validate(model, cfg: TrainConfig, class_names: tuple[str, ...], device: torch.device) -> dict[str, Any]:
    """Single-scale (ratio 1, no flip) sliding-window mIoU on the validation list against GT."""
    d = cfg.data
    root = Path(d.root)
    names = _read_list(root, d.val_list or "")[: cfg.schedule.val_max_images or None]
    model.eval()
    T = model.text_embeddings()
    opts = InferenceOptions.for_engine(model.config, scales=(1.0,), flip=False, device=str(device))
    conf = ConfusionMatrix(len(class_names))
    for name in names:
        try:
            image = read_image(root / d.image_dir / f"{name}.jpg")
            gt = read_mask(root / d.gt_dir / f"{name}.png")
        except (ValueError, FileNotFoundError) as e:
            logger.warning("validation skips %s", e)
            continue
        pred = predict(lambda w: model(w, text_embeddings=T).logits.float(), [image], opts)[0]
        conf.update(pred.mask, gt, name=name)
    model.train()
    m = conf.compute()
    return {"miou": m.miou, "iou": m.iou.tolist(), "images": len(names)}


def _read_list(root: Path, name: str) -> list[str]:
    p = resolve_list(root, name)  # ImageSets/Segmentation/<name>, else <name> under root (voc_format/val_5000.txt)
    if p is None:
        raise UsageError(f"{root / 'ImageSets' / 'Segmentation' / name}: list file not found (data.val_list)")
    return [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()]


@cli
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="weakclip-train",
        description=__doc__.split("\n\n")[0],
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", help=f"YAML/TOML config file or a packaged config name ({DEFAULT_CONFIG} by default)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in work_dir from its last.pt")
    group.add_argument("--overwrite", action="store_true", help="delete this program's outputs in work_dir first")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. train.iters=200")
    args = ap.parse_intermixed_args(argv)
    cfg = read_config(args.config, args.overrides)
    run_training(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def run_training(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> None:
    """The whole run of ``cfg`` (the library form of ``weakclip train``): log lines on stdout, one process or a
    torchrun rank; a run that fails before writing leaves no empty work_dir."""
    setup_logging(logger=logger.name)  # INFO lines on stdout, warnings on stderr
    rank, world, device = setup_distributed(cfg.device)
    try:
        with removed_if_left_empty(cfg.work_dir):
            train(cfg, rank, world, device, resume=resume, progress=progress, overwrite=overwrite)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _labels_path(cfg: TrainConfig) -> Path | None:
    """``data.labels`` (relative to ``data.root`` unless absolute), or None when the labels come from the seeds."""
    return Path(cfg.data.root) / cfg.data.labels if cfg.data.labels else None


def _check_labels(cfg: TrainConfig, num_classes: int) -> None:
    """A ``data.labels`` file that does not fit the model: check-data's line (a missing one: the dataset's error)."""
    path = _labels_path(cfg)
    if path is None or not path.is_file():
        return
    try:
        load_labels(path, num_classes)
    except ValueError as e:
        raise UsageError(" ".join(str(e).split())) from None


def _build_dataset(cfg: TrainConfig, class_names: tuple[str, ...], crop: int, seed: int) -> SegmentationDataset:
    d = cfg.data
    try:
        return SegmentationDataset(
            Path(d.root),
            split_list=list(d.train_lists),
            image_dir=d.image_dir,
            seed_dir=d.seed_dir,
            gt_dir=d.gt_dir,
            class_names=class_names,
            crop_size=crop,
            labels=_labels_path(cfg),
            max_bad_fraction=d.max_bad_fraction,
            seed=seed,
        )
    except (FileNotFoundError, ValueError) as e:  # lists, labels, class indexing: the data config is wrong
        raise UsageError(f"data: {' '.join(str(e).split())}") from None


def _resume_state(last: Path, cfg: TrainConfig) -> dict[str, Any]:
    """last.pt, after checking that it is a training state whose config equals ``cfg`` up to RESUME_MAY_CHANGE."""
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        first = " ".join(str(e).split())[:300]
        raise UsageError(f"{last}: cannot read the training checkpoint ({first}); --overwrite starts again") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "iteration"} <= set(state):
        raise UsageError(f"{last}: not a training checkpoint written by train.py; --overwrite starts again")
    try:
        recorded = json.loads(state.get("config") or "null")
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise UsageError(f"{last}: records no config to compare with; --overwrite starts again")
    if diff := config_differences(recorded, cfg.to_dict()):
        more = f" (and {len(diff) - 1} more: {', '.join(d.split()[0] for d in diff[1:])})" if len(diff) > 1 else ""
        raise UsageError(
            f"{last}: --resume with a config that differs from the recorded run: {diff[0]}{more}; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change on resume (use a new work_dir, or --overwrite)"
        )
    return state


def _drop_rows_after(path: Path, iteration: int) -> None:
    """Keep the rows of a log CSV up to ``iteration`` (those logged after the checkpoint are redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("iteration", "").isdigit() and int(r["iteration"]) <= iteration]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def train(
    cfg: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
    resume: bool,
    progress: bool = True,
    overwrite: bool = False,
):
    """Run the training loop; returns the trained (unwrapped) model.  Every rank checks (read-only), rank 0 writes."""
    t_cfg, d_cfg, s_cfg = cfg.train, cfg.data, cfg.schedule
    main_rank = rank == 0
    work = Path(cfg.work_dir)
    last = work / "last.pt"
    check_work_dir(work, resume, overwrite)
    state = _resume_state(last, cfg) if resume and last.is_file() else None
    if state is not None:
        reached, wanted = int(state["iteration"]), t_cfg.iters
        # at train.iters with no final model yet (stopped after its last checkpoint): the run only writes its outputs
        if reached > wanted or (reached == wanted and (work / "final.safetensors").is_file()):
            raise UsageError(
                f"{last}: --resume: the run is already at iteration {reached} ≥ train.iters={wanted}; "
                "raise train.iters to continue"
            )

    seed = t_cfg.seed
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)

    root = Path(d_cfg.root)
    names_file = root / "class_names.txt"
    overrides = dict(cfg.model.overrides)
    if names_file.is_file() and "class_names" not in overrides:
        overrides["class_names"] = tuple(n.strip() for n in names_file.read_text().splitlines() if n.strip())
    try:
        num_classes = get_config(cfg.model.preset, **overrides).num_classes
        torch.manual_seed(seed)  # identical initial weights on every rank
        _check_labels(cfg, num_classes)  # before any model work (CLIP weights may be downloaded)
        model = weakclip.build_model(cfg.model.preset, clip_weights=cfg.model.clip_weights, **overrides)
    except (KeyError, ValueError, TypeError) as e:  # unknown preset / config key, bad class name
        raise UsageError(f"model: {' '.join(str(e).strip(chr(39)).split())}") from None
    class_names = model.class_names
    dataset = _build_dataset(cfg, class_names, model.config.crop_size, seed + rank)
    fingerprint = data_fingerprint(dataset.names, class_names)
    if state is not None and state.get("data_sha256") and state["data_sha256"] != fingerprint:
        raise UsageError(
            f"{last}: --resume with other training data: the training list or the class names differ "
            "from the recorded run (use a new work_dir, or --overwrite)"
        )
    if d_cfg.val_list:
        _read_list(root, d_cfg.val_list)  # a missing validation list fails now, not at the first validation
    if world > 1:
        dist.barrier()  # every rank has checked the work_dir before rank 0 writes into it
    if main_rank:
        work.mkdir(parents=True, exist_ok=True)
        # --overwrite: our outputs; always: temporaries of a run killed mid-write (never a valid checkpoint)
        removed = our_files(work) if overwrite else sorted(work.glob(".*.tmp*"))
        for p in removed:
            p.unlink()
        if overwrite and removed:
            logger.info("--overwrite: removed %s from %s", ", ".join(p.name for p in removed), work)
        write_text_atomic(work / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    model.to(device).train()
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)
    use_amp = t_cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)  # disabled: a pass-through to optimizer.step()
    forward = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)
    criterion = WeakCLIPLoss(model.config.mean, model.config.std, cfg.loss.seed, cfg.loss.boundary, cfg.loss.aux)

    recorded = cfg.to_dict()  # what last.pt records (a --resume compares with it)
    start, best = 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start, best = int(state["iteration"]), float(state["best_miou"])
        set_rng_state(state["rng"])
    if resume and main_rank:
        for f in ("log.csv", "val.csv"):
            _drop_rows_after(work / f, start)  # without last.pt: rows of a run killed before its first checkpoint
        logger.info(
            f"resumed from {last} at iteration {start}"
            if state is not None
            else f"--resume: no {last} yet, starting from scratch"
        )
    del state

    total, bs = t_cfg.iters, t_cfg.batch_size
    log_rows: list[dict[str, Any]] = []
    # a tqdm bar on a terminal, a line every WEAKCLIP_PROGRESS_INTERVAL s otherwise; off: the log lines below
    bar = progress_meter(total=total, initial=start, desc="train", unit="it", disable=not (progress and main_rank))
    log_lines = bar.mode == "off"
    # threads that decode and augment samples in parallel (PIL and numpy release the GIL)
    pool = ThreadPoolExecutor(d_cfg.num_workers, thread_name_prefix="data") if d_cfg.num_workers > 0 else None
    t0 = time.perf_counter()
    try:
        for it in range(start, total):
            lr = lr_at(it, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = sample_indices(len(dataset), seed, it * bs, bs, rank, world)
            dataset.set_epoch(it)  # augmentation randomness = f(seed, iteration, sample): resumes exactly
            batch = collate(list(pool.map(dataset.__getitem__, idx)) if pool else [dataset[i] for i in idx])
            images = batch["image"].to(device, non_blocking=True)
            seeds = batch["seed"].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                out = forward(images)
            losses = criterion(out.logits.float(), out.score_map.float(), seeds, images)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            step = it + 1
            if main_rank:
                row = {"iteration": step, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()}}
                log_rows.append(row)
                if not log_lines:  # before update(): a progress line shows this iteration's losses
                    shown = (("loss", "loss"), ("seed", "seed"), ("bd", "boundary"), ("aux", "aux"))
                    bar.set_postfix({k: f"{row[c]:.3f}" for k, c in shown}, refresh=False)
                bar.update(1)
                if step % s_cfg.log_interval == 0 or step == total:
                    rate = (step - start) / (time.perf_counter() - t0)
                    _append_csv(work / "log.csv", log_rows, rate)
                    log_rows.clear()
                    if log_lines:
                        logger.info(f"it {step}/{total} loss {row['loss']:.4f} lr {lr:.2e} {rate:.2f} it/s")
            if (step % s_cfg.checkpoint_interval == 0 or step == total) and main_rank:
                save_training_state(last, model, optimizer, scaler, step, best, recorded, fingerprint)
            if (step % s_cfg.val_interval == 0 or step == total) and main_rank and d_cfg.val_list:
                res = validate(model, cfg, class_names, device)
                _append_csv(work / "val.csv", [{"iteration": step, "miou": res["miou"]}], None)
                msg = f"iteration {step}: val mIoU {100 * res['miou']:.2f} on {res['images']} images"
                if res["miou"] > best:
                    best = res["miou"]
                    weakclip.save_checkpoint(model, work / "best.safetensors", extra={"iteration": str(step)})
                    msg += " (best)"
                    # last.pt records the new `best`
                    save_training_state(last, model, optimizer, scaler, step, best, recorded, fingerprint)
                bar.write(msg) if bar.mode == "bar" else logger.info(msg)
            if world > 1:
                dist.barrier()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    if dataset.bad_samples and main_rank:
        bad = "; ".join(f"{name}: {reason}" for name, reason in dataset.bad_samples)
        logger.warning("%d bad sample(s) skipped: %s", len(dataset.bad_samples), bad)
    if main_rank:
        weakclip.save_checkpoint(model, work / "final.safetensors", extra={"iteration": str(total)})
        save_text_embeddings(model, work / "text_embeddings.safetensors")
        logger.info(f"done: {work / 'final.safetensors'} (best val mIoU {100 * max(best, 0):.2f})")
    return model


def _append_csv(path: Path, rows: list[dict[str, Any]], rate: float | None) -> None:
    if not rows:
        return
    new = not path.exists()
    extra = {"it_per_s": rate} if rate is not None else {}
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], *extra])
        if new:
            w.writeheader()
        w.writerows({**r, **extra} for r in rows)


if __name__ == "__main__":
    sys.exit(main())
