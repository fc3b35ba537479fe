"""Train WeakCLIP on CAM seeds.

    python training/train.py --config training/configs/synthetic_tiny.yaml [KEY=VALUE ...] [--resume]
    torchrun --nproc_per_node 2 training/train.py --config ... (DDP: gloo on CPU, nccl on GPU)

KEY=VALUE overrides use dotted keys of the YAML/TOML config (``train.iters=200 data.root=/data/voc``); values are
parsed as YAML.  The resolved config is written to ``<work_dir>/config.yaml``.  Checkpoints are written atomically
(temporary name, then rename) to ``<work_dir>/last.pt`` every ``schedule.checkpoint_interval`` iterations; the best
validation model goes to ``best.safetensors``, the final one to ``final.safetensors`` with the precomputed text
embeddings beside it (``text_embeddings.safetensors``).  ``--resume`` restores model, optimiser, scheduler, RNG
state and iteration from ``last.pt``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

if __package__ in (None, ""):  # `python training/train.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import weakclip
from weakclip.data.datasets import SegmentationDataset, collate
from weakclip.evaluate import ConfusionMatrix
from weakclip.inference import InferenceOptions, predict
from weakclip.io import atomic_path, read_image, read_mask
from weakclip.losses import WeakCLIPLoss

DEFAULTS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "configs" / "synthetic_tiny.yaml").read_text())


# ----------------------------------------------------------------------------------------------------------------
# config


def load_config(path: str | None, overrides: list[str]) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"error: {p}: config file not found")
        if p.suffix == ".toml":
            import tomllib

            user = tomllib.loads(p.read_text())
        else:
            user = yaml.safe_load(p.read_text()) or {}
        _merge(cfg, user, str(p))
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"error: override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"error: unknown config section {part!r} in override {item!r}")
            node = node[part]
        if parts[-1] not in node and not (len(parts) >= 2 and parts[-2] == "overrides"):
            raise SystemExit(f"error: unknown config key {key!r}; known: {sorted(node)}")
        node[parts[-1]] = _parse_value(value)
    return cfg


def _parse_value(text: str) -> Any:
    """YAML value, with ``1e-3``-style floats accepted (YAML 1.1 reads them as strings)."""
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _merge(dst: dict, src: dict, where: str, prefix: str = "") -> None:
    for k, v in src.items():
        if k not in dst and prefix.rstrip(".") != "model.overrides":
            raise SystemExit(f"error: {where}: unknown config key {prefix}{k!r}")
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "overrides":
            _merge(dst[k], v, where, f"{prefix}{k}.")
        else:
            dst[k] = v


# ----------------------------------------------------------------------------------------------------------------
# distributed helpers


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device=cuda requested but no CUDA GPU is available")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def is_main(rank: int) -> bool:
    return rank == 0


# ----------------------------------------------------------------------------------------------------------------
# schedule, sampling, RNG


def lr_at(it: int, cfg: dict) -> float:
    """Linear warm-up from lr·warmup_ratio to lr, then cosine from lr to min_lr at ``iters``."""
    t = cfg["train"]
    lr, warm, total = t["lr"], t["warmup_iters"], t["iters"]
    if it < warm:
        r = t["warmup_ratio"]
        return lr * (r + (1 - r) * it / max(warm, 1))
    progress = (it - warm) / max(total - warm, 1)
    return t["min_lr"] + 0.5 * (lr - t["min_lr"]) * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_indices(n: int, seed: int, start: int, count: int, rank: int, world: int) -> list[int]:
    """Indices ``start .. start+count`` of this rank's slice of an endless stream of seeded epoch permutations.

    Deterministic in (seed, position), so a resumed run continues the exact sample order.
    """
    out = []
    pos = start * world + rank  # global position of this rank's first sample
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1000003 + epoch)
        perm = torch.randperm(n, generator=g)
        out.append(int(perm[offset]))
        pos += world
    return out


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],  # fmt: skip
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


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def save_training_state(path: Path, model, optimizer, scaler, it: int, best: float, cfg: dict) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "iteration": it,
        "best_miou": best,
        "rng": rng_state(),
        "config": json.dumps(cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: {path}: cannot read training checkpoint ({e})") from None


def save_text_embeddings(model, path: Path) -> None:
    from safetensors.torch import save_file

    model.eval()
    with torch.no_grad():
        T = model.text_embeddings().float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file({"text_embeddings": T}, str(tmp), metadata={"class_names": json.dumps(list(model.class_names))})


# ----------------------------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(model, cfg: dict, class_names: tuple[str, ...], device: torch.device) -> dict[str, Any]:
    """Single-scale (ratio 1, no flip) sliding-window mIoU on the validation list against GT."""
    d = cfg["data"]
    root = Path(d["root"])
    names = _read_list(root, d["val_list"])
    if cfg["schedule"].get("val_max_images"):
        names = names[: int(cfg["schedule"]["val_max_images"])]
    model.eval()
    T = model.text_embeddings()
    opts = InferenceOptions.for_engine(model.config, scales=(1.0,), flip=False, device=str(device))
    conf = ConfusionMatrix(len(class_names))
    for name in names:
        try:
            image = read_image(root / d["image_dir"] / f"{name}.jpg")
            gt = read_mask(root / d["gt_dir"] / f"{name}.png")
        except (ValueError, FileNotFoundError) as e:
            print(f"warning: validation skips {e}", file=sys.stderr)
            continue
        pred = predict(lambda w: model(w, text_embeddings=T).logits.float(), [image], opts)[0]
        conf.update(pred.mask, gt, name=name)
    model.train()
    m = conf.compute()
    return {"miou": m.miou, "iou": m.iou.tolist(), "images": len(names)}


def _read_list(root: Path, name: str) -> list[str]:
    p = Path(name) if Path(name).is_absolute() else root / "ImageSets" / "Segmentation" / name
    if not p.is_file():
        raise SystemExit(f"error: {p}: list file not found")
    return [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", help="YAML or TOML config (defaults: training/configs/synthetic_tiny.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from <work_dir>/last.pt if it exists")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. train.iters=200")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    rank, world, device = setup_distributed(cfg["device"])
    try:
        train(cfg, rank, world, device, resume=args.resume, progress=not args.no_progress)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: dict, rank: int, world: int, device: torch.device, resume: bool, progress: bool = True):
    """Run the training loop; returns the trained (unwrapped) model."""
    t_cfg, d_cfg, s_cfg = cfg["train"], cfg["data"], cfg["schedule"]
    work = Path(cfg["work_dir"])
    if is_main(rank):
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob(".*.tmp*"):  # temporaries of a run killed mid-write; never a valid checkpoint
            stale.unlink()
        with atomic_path(work / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    seed = int(t_cfg["seed"])
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)

    root = Path(d_cfg["root"])
    names_file = root / "class_names.txt"
    overrides = dict(cfg["model"].get("overrides") or {})
    if names_file.is_file() and "class_names" not in overrides:
        overrides["class_names"] = tuple(n.strip() for n in names_file.read_text().splitlines() if n.strip())
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = weakclip.build_model(cfg["model"]["preset"], clip_weights=cfg["model"]["clip_weights"], **overrides)
    class_names = model.class_names
    labels = d_cfg.get("labels")
    dataset = SegmentationDataset(
        root,
        split_list=list(d_cfg["train_lists"]),
        image_dir=d_cfg["image_dir"],
        seed_dir=d_cfg["seed_dir"],
        gt_dir=d_cfg["gt_dir"],
        class_names=class_names,
        crop_size=model.config.crop_size,
        train=True,
        labels=(root / labels) if labels and not Path(labels).is_absolute() else labels,
        max_bad_fraction=float(d_cfg["max_bad_fraction"]),
        seed=seed + rank,
    )
    model.to(device).train()
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t_cfg["lr"], weight_decay=t_cfg["weight_decay"])
    use_amp = bool(t_cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else
                                                    None, find_unused_parameters=False) if world > 1 else None  # fmt: skip
    forward = ddp if ddp is not None else model
    criterion = WeakCLIPLoss(model.config.mean, model.config.std, cfg["loss"]["seed"], cfg["loss"]["boundary"],
                             cfg["loss"]["aux"])  # fmt: skip

    start, best = 0, -1.0
    last = work / "last.pt"
    if resume and last.is_file():
        state = load_training_state(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start, best = int(state["iteration"]), float(state["best_miou"])
        set_rng_state(state["rng"])
        if is_main(rank):
            print(f"resumed from {last} at iteration {start}")
    elif resume and is_main(rank):
        print(f"--resume: no {last} yet, starting from scratch")

    total, bs = int(t_cfg["iters"]), int(t_cfg["batch_size"])
    log_rows: list[dict[str, Any]] = []
    bar = None
    if progress and is_main(rank):
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)
    pool = _loader_pool(dataset, int(d_cfg["num_workers"]))
    t0, done_since = time.perf_counter(), 0
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
            if scaler is not None:
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                losses["loss"].backward()
                optimizer.step()
            done_since += 1
            step = it + 1
            if is_main(rank):
                row = {"iteration": step, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()}}
                log_rows.append(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", seed=f"{row['seed']:.3f}",
                                    bd=f"{row['boundary']:.3f}", aux=f"{row['aux']:.3f}")  # fmt: skip
                if step % s_cfg["log_interval"] == 0 or step == total:
                    rate = done_since / (time.perf_counter() - t0)
                    _append_csv(work / "log.csv", log_rows, rate)
                    log_rows.clear()
                    if bar is None:
                        print(f"it {step}/{total} loss {row['loss']:.4f} lr {lr:.2e} {rate:.2f} it/s", flush=True)
            if step % s_cfg["checkpoint_interval"] == 0 or step == total:
                if is_main(rank):
                    save_training_state(last, model, optimizer, scaler, step, best, cfg)
            if (step % s_cfg["val_interval"] == 0 or step == total) and is_main(rank) and d_cfg.get("val_list"):
                res = validate(model, cfg, class_names, device)
                _append_csv(work / "val.csv", [{"iteration": step, "miou": res["miou"]}], None)
                msg = f"iteration {step}: val mIoU {100 * res['miou']:.2f} on {res['images']} images"
                if res["miou"] > best:
                    best = res["miou"]
                    weakclip.save_checkpoint(model, work / "best.safetensors", extra={"iteration": str(step)})
                    msg += " (best)"
                    save_training_state(last, model, optimizer, scaler, step, best, cfg)  # keep `best` in sync
                (bar.write if bar is not None else print)(msg)
            if world > 1:
                dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown()
    if dataset.bad_samples and is_main(rank):
        print(f"{len(dataset.bad_samples)} bad sample(s) skipped:", file=sys.stderr)
        for name, reason in dataset.bad_samples:
            print(f"  {name}: {reason}", file=sys.stderr)
    if is_main(rank):
        weakclip.save_checkpoint(model, work / "final.safetensors", extra={"iteration": str(total)})
        save_text_embeddings(model, work / "text_embeddings.safetensors")
        print(f"done: {work / 'final.safetensors'} (best val mIoU {100 * max(best, 0):.2f})")
    return model


def _loader_pool(dataset, workers: int):
    """Threads that decode and augment samples in parallel (PIL and numpy release the GIL)."""
    if workers <= 0:
        return None
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data")


def _append_csv(path: Path, rows: list[dict[str, Any]], rate: float | None) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0].keys(), *(["it_per_s"] if rate is not None else [])])
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**r, **({"it_per_s": rate} if rate is not None else {})})


if __name__ == "__main__":
    sys.exit(main())
