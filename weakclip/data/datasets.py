"""VOC-layout segmentation datasets (VOC2012 + SBD train_aug, COCO 2014 ``voc_format``, the synthetic set).

Bad samples are logged once, recorded in ``dataset.bad_samples`` and skipped; more than ``max_bad_fraction`` of them
(per DataLoader worker), or a COCO mask that does not fit ``coco_layout``, stops the run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from weakclip.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES
from weakclip.data.io import read_image, read_mask, reading
from weakclip.data.labels import Labels, labels_from_mask, load_labels, multi_hot, npy_dtype, restricted_load_npy
from weakclip.data.transforms import IGNORE_INDEX, TrainTransform, test_transform
from weakclip.errors import RuntimeFailure

logger = logging.getLogger(__name__)

COCO_LAYOUTS = ("contiguous81", "official91")


class BadSample(Exception):
    """A sample that cannot be used (the message names the file and the problem)."""


class TooManyBadSamples(RuntimeFailure, RuntimeError):
    """More than ``max_bad_fraction`` of the samples are bad: the run stops (exit status 1 at the command line)."""


class LabelIndexingError(ValueError):
    """Mask values do not match the chosen class indexing (e.g. COCO category ids read as contiguous)."""


def _coco_lut() -> np.ndarray:
    """Category id (0..255) → contiguous index; -1 for values that are not a category id, 0 and 255 kept."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[0], lut[IGNORE_INDEX] = 0, IGNORE_INDEX
    lut[list(COCO_CATEGORY_IDS)] = np.arange(1, len(COCO_CATEGORY_IDS) + 1)
    return lut


def list_candidates(root: str | os.PathLike, entry: str | os.PathLike) -> list[Path]:
    """Where a list entry may be, in order: ``root/ImageSets/Segmentation/<entry>[.txt]``, then ``root/<entry>``."""
    root, s = Path(root), str(entry)
    lists = root / "ImageSets" / "Segmentation"
    return list(dict.fromkeys([lists / s, *([] if s.endswith(".txt") else [lists / f"{s}.txt"]), root / s]))


def resolve_list(root: str | os.PathLike, entry: str | os.PathLike) -> Path | None:
    """The first of :func:`list_candidates` that is a file, or None."""
    return next((c for c in list_candidates(root, entry) if c.is_file()), None)


def read_split_lists(root: str | os.PathLike, split_list: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image names from one or several list files (:func:`list_candidates`, relative entries always under ``root``),
    their union in order.  A line holds a name or ``/JPEGImages/x.jpg /SegmentationClass/x.png`` (the name is taken)."""
    entries = [split_list] if isinstance(split_list, (str, os.PathLike)) else list(split_list)
    if not entries:
        raise ValueError("split_list is empty")
    names: dict[str, None] = {}
    for entry in map(str, entries):
        path = resolve_list(root, entry)
        if path is None:
            tried = ", ".join(map(str, list_candidates(root, entry)))
            raise FileNotFoundError(f"split list {entry!r} not found (tried {tried})")
        names.update((Path(line.split()[0]).stem, None) for line in path.read_text().splitlines() if line.split())
    return list(names)


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """One class name per line, line 0 = ``background``."""
    names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    if not names or names[0] != "background":
        raise ValueError(f"{path}: the first class name must be 'background', got {names[:1]}")
    return names


class SegmentationDataset(Dataset):
    """Images + seeds (train, H = W = crop_size) or images + GT (val, no augmentation) in VOC layout.  A sample is a
    dict: ``image`` (3, H, W) float32, ``seed`` (H, W) int64 (255 ignore; in val mode only with ``seed_dir``),
    ``labels`` (K,) float32 multi-hot (background always 1), ``name``, and in val mode ``gt`` (H, W) int64."""

    def __init__(
        self,
        root: str | os.PathLike,
        split_list: str | os.PathLike | Sequence[str | os.PathLike] = "train.txt",
        image_dir: str = "JPEGImages",
        seed_dir: str | None = "SeedMasks",
        gt_dir: str | None = "SegmentationClass",
        class_names: Sequence[str] | None = None,
        crop_size: int = 512,
        train: bool = True,
        labels: str | os.PathLike | Labels | None = None,
        max_bad_fraction: float = 0.01,
        seed: int = 0,
        coco_layout: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform: TrainTransform | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / image_dir
        self.seed_dir = None if seed_dir is None else self.root / seed_dir
        self.gt_dir = None if gt_dir is None else self.root / gt_dir
        self.train = train
        if train and self.seed_dir is None:
            raise ValueError("train mode needs seed_dir (the seed masks to train on)")
        if not train and self.gt_dir is None:
            raise ValueError("val mode needs gt_dir (the ground-truth masks)")
        if coco_layout is not None and coco_layout not in COCO_LAYOUTS:
            raise ValueError(f"coco_layout must be one of {COCO_LAYOUTS} or None, got {coco_layout!r}")
        self.coco_layout = coco_layout
        if class_names is None and (self.root / "class_names.txt").is_file():
            class_names = read_class_names(self.root / "class_names.txt")
        self.class_names = tuple((COCO_CLASSES if coco_layout else VOC_CLASSES) if class_names is None else class_names)
        self.num_classes = len(self.class_names)
        if coco_layout and self.num_classes != len(COCO_CLASSES):
            raise ValueError(f"coco_layout={coco_layout!r} needs K=81 class names, got {self.num_classes}")
        self._lut = _coco_lut() if coco_layout == "official91" else None
        self.mean, self.std, self.crop_size = tuple(mean), tuple(std), crop_size
        self.transform = transform or TrainTransform(crop_size=crop_size, mean=self.mean, std=self.std)
        self.max_bad_fraction, self.seed, self.epoch = max_bad_fraction, seed, 0
        self._draws: dict[int, int] = {}

        self.names = read_split_lists(self.root, split_list)
        if not self.names:
            raise ValueError(f"the split list(s) {split_list!r} under {self.root} hold no image names")
        if labels is None or isinstance(labels, dict):
            self.labels_source = None if labels is None else "dict"
            self._labels: Labels | None = None if labels is None else {k: sorted(v) for k, v in labels.items()}
        else:
            self.labels_source = str(labels)
            self._labels = load_labels(labels, self.num_classes)
        self.bad_samples: list[tuple[str, str]] = []
        self._bad_names: set[str] = set()
        self._check_files()
        if coco_layout:
            self._check_coco_indexing()

    def _paths(self, name: str) -> dict[str, Path]:
        """The files sample ``name`` needs: ``image``, and the ``seed`` / ``gt`` masks this mode reads."""
        masks = {"seed": self.seed_dir, "gt": None if self.train else self.gt_dir}
        return {"image": self.image_dir / f"{name}.jpg"} | {k: d / f"{name}.png" for k, d in masks.items() if d}

    def _check_files(self) -> None:
        """Cheap up-front check (stat only): missing files and missing image-level labels are bad samples."""
        problems = []
        for name in self.names:
            missing = next((p for p in self._paths(name).values() if not p.is_file()), None)
            if missing is not None:
                problems.append((name, f"{missing}: file not found"))
            elif self._labels is not None and name not in self._labels:
                problems.append((name, f"{self.labels_source}: no image-level label for {name!r}"))
        if len(problems) > self.max_bad_fraction * len(self.names):
            raise TooManyBadSamples(self._summary(problems))
        for name, reason in problems:
            self._record_bad(name, reason)

    def _check_coco_indexing(self, max_masks: int = 16) -> None:
        """Read the first few masks and check their values against the chosen COCO indexing (fail early)."""
        for name in [n for n in self.names if n not in self._bad_names][:max_masks]:
            for p in [p for k, p in self._paths(name).items() if k != "image"]:
                try:
                    mask = read_mask(p)
                except (OSError, ValueError):
                    continue  # reported as a bad sample when it is loaded
                self._map_labels(mask, p)

    def _summary(self, problems: list[tuple[str, str]]) -> str:
        n, total = len(problems), len(self.names)
        head = "; ".join(f"{name}: {r}" for name, r in problems[:5]) + (f" (and {n - 5} more)" if n > 5 else "")
        return (
            f"{n} of {total} samples ({100 * n / total:.1f} %) under {self.root} are bad, more than "
            f"max_bad_fraction={self.max_bad_fraction:g}: {head}"
        )

    def _record_bad(self, name: str, reason: str) -> None:
        if name in self._bad_names:
            return
        self._bad_names.add(name)
        self.bad_samples.append((name, reason))
        logger.warning("skipping sample %s: %s", name, reason)
        if len(self.bad_samples) > self.max_bad_fraction * len(self.names):
            raise TooManyBadSamples(self._summary(self.bad_samples))

    def _map_labels(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """Check the mask's values against K (and the COCO indexing) and map them to contiguous indices."""
        if self.coco_layout == "official91":
            assert self._lut is not None
            mapped = self._lut[mask]
            if (mapped < 0).any():
                bad = np.unique(mask[mapped < 0]).tolist()
                raise LabelIndexingError(
                    f"{path}: value(s) {bad} are not COCO category ids, but coco_layout='official91' expects "
                    "category-id slots (1..90 with gaps); masks in contiguous 0..80 indexing need "
                    "coco_layout='contiguous81'"
                )
            return mapped.astype(np.uint8)
        hi = int(mask.max(initial=0, where=mask != IGNORE_INDEX)) if mask.size else 0
        if hi < self.num_classes:
            return mask
        if self.coco_layout == "contiguous81":
            raise LabelIndexingError(
                f"{path}: max label value {hi} > 80, but coco_layout='contiguous81' expects 0..80 (+255); "
                "masks holding COCO category ids (1..90) need coco_layout='official91'"
            )
        bad = sorted(v for v in np.unique(mask).tolist() if v >= self.num_classes and v != IGNORE_INDEX)
        raise BadSample(f"{path}: label value(s) {bad} >= K={self.num_classes} (only 255 may exceed K-1)")

    def _read_mask(self, path: Path, image_hw: tuple[int, int]) -> np.ndarray:
        try:
            mask = read_mask(path)
        except (FileNotFoundError, ValueError) as e:
            raise BadSample(str(e)) from None
        if mask.shape != image_hw:
            raise BadSample(
                f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {image_hw[0]}x{image_hw[1]}"
            )
        return self._map_labels(mask, path)

    def _rng(self, idx: int) -> np.random.Generator:
        # Deterministic per (seed, epoch, index, draw count): new augmentations every time a sample is drawn again.
        draw = self._draws.get(idx, 0)
        self._draws[idx] = draw + 1
        return np.random.default_rng([self.seed, self.epoch, idx, draw])

    def set_epoch(self, epoch: int) -> None:
        """Mix the epoch into the augmentation randomness (draw counts restart: a resume repeats the augmentations)."""
        if int(epoch) != self.epoch:
            self._draws.clear()
        self.epoch = int(epoch)

    def load(self, idx: int) -> dict[str, Any]:
        """Load sample ``idx`` without skipping; raises :class:`BadSample` for an unusable sample."""
        name = self.names[idx]
        paths = self._paths(name)
        try:
            image = read_image(paths["image"])
        except (FileNotFoundError, ValueError) as e:
            raise BadSample(str(e)) from None
        seed, gt = (self._read_mask(paths[k], image.shape[:2]) if k in paths else None for k in ("seed", "gt"))
        mask = seed if seed is not None else gt
        assert mask is not None  # train mode has seed_dir, eval mode gt_dir (checked in __init__)
        if self._labels is not None and name not in self._labels:
            raise BadSample(f"{self.labels_source}: no image-level label for {name!r}")
        present = labels_from_mask(mask) if self._labels is None else self._labels[name]
        if any(c >= self.num_classes for c in present):
            raise BadSample(f"{self.labels_source}: label of {name!r} has class index >= K={self.num_classes}")
        sample: dict[str, Any] = {"name": name, "labels": torch.from_numpy(multi_hot(present, self.num_classes))}
        if gt is None:  # train mode: mask is the seed
            sample["image"], sample["seed"] = self.transform(image, mask, self._rng(idx))
        else:
            sample["image"] = test_transform(image, self.mean, self.std)
            sample["gt"] = torch.from_numpy(gt.astype(np.int64))
            if seed is not None:
                sample["seed"] = torch.from_numpy(seed.astype(np.int64))
        return sample

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self.names)
        for j in ((idx + step) % n for step in range(n)):
            if self.names[j] in self._bad_names:
                continue
            try:
                return self.load(j)
            except BadSample as e:
                self._record_bad(self.names[j], str(e))
        raise TooManyBadSamples(self._summary(self.bad_samples))


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts (``size``: (B, 2) original (H, W)); samples of different sizes (val mode) are padded at the
    bottom/right to the largest H and W."""
    sizes = torch.tensor([tuple(b["image"].shape[-2:]) for b in batch], dtype=torch.int64)
    out: dict[str, Any] = {"name": [b["name"] for b in batch], "size": sizes}
    H, W = sizes.max(0).values.tolist()
    for key in (k for k in batch[0] if k != "name"):
        vals = [b[key] for b in batch]
        if key in ("image", "seed", "gt"):  # pad bottom/right: image 0, masks 255
            fill = 0.0 if key == "image" else IGNORE_INDEX
            vals = [F.pad(v, (0, W - v.shape[-1], 0, H - v.shape[-2]), value=fill) for v in vals]
        out[key] = torch.stack(vals)
    return out


def read_cam_npy(path: str | os.PathLike, *, allow_pickle_cams: bool = False) -> dict[int, np.ndarray] | np.ndarray:
    """An MCTformer ``{fg_index: cam (H, W)}`` or IRN ``{"keys", "cam"/"high_res": (C, H, W)}`` CAM ``.npy`` as
    ``{K-class index (fg + 1): cam (H, W) float32}`` (a plain array as is); pickles need ``allow_pickle_cams``."""
    path = Path(path)
    with reading(path, "not a .npy file"), open(path, "rb") as f:
        dtype = npy_dtype(f)
    if dtype.hasobject and not allow_pickle_cams:
        raise ValueError(
            f"{path}: this CAM file is a pickle (an object array); pickles can run code when loaded, so it is only "
            "read with allow_pickle_cams=True (and then through a restricted unpickler). Pass it only for files "
            "you made yourself"
        )
    obj = restricted_load_npy(path)
    if isinstance(obj, np.ndarray):
        return obj
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of CAMs, got {type(obj).__name__}")
    if "keys" in obj:
        cams = obj.get("high_res", obj.get("cam"))
        if cams is None:
            raise ValueError(f"{path}: IRN-style CAM dict without 'high_res' or 'cam'")
        cams = np.asarray(cams, dtype=np.float32)
        keys = np.asarray(obj["keys"]).reshape(-1)
        if cams.shape[0] != len(keys):
            raise ValueError(f"{path}: {len(keys)} keys but {cams.shape[0]} CAMs")
        return {int(k) + 1: cams[i] for i, k in enumerate(keys)}
    if bad := [k for k in obj if not isinstance(k, (int, np.integer))]:
        raise ValueError(f"{path}: CAM dict keys must be class indices, got {bad[0]!r}")
    return {int(k) + 1: np.asarray(v, dtype=np.float32) for k, v in obj.items()}
