"""Data: VOC-layout datasets, the training augmentation, image-level label readers and the synthetic generator."""

from weakclip.data.datasets import (
    COCO_LAYOUTS,
    BadSample,
    LabelIndexingError,
    SegmentationDataset,
    collate,
    list_candidates,
    read_cam_npy,
    read_class_names,
    read_split_lists,
    resolve_list,
)
from weakclip.data.labels import (
    RestrictedUnpickler,
    labels_from_mask,
    labels_from_seed_dir,
    load_labels,
    multi_hot,
    read_cls_labels_npy,
    read_labels_json,
    read_labels_txt,
    restricted_load_npy,
)
from weakclip.data.transforms import TrainTransform, photometric_distortion, test_transform

__all__ = [
    "COCO_LAYOUTS",
    "BadSample",
    "LabelIndexingError",
    "RestrictedUnpickler",
    "SegmentationDataset",
    "TrainTransform",
    "collate",
    "labels_from_mask",
    "labels_from_seed_dir",
    "list_candidates",
    "load_labels",
    "multi_hot",
    "photometric_distortion",
    "read_cam_npy",
    "read_class_names",
    "read_cls_labels_npy",
    "read_labels_json",
    "read_labels_txt",
    "read_split_lists",
    "resolve_list",
    "restricted_load_npy",
    "test_transform",
]
