"""Data: VOC-layout datasets, the training augmentation, image-level label readers and the synthetic generator."""

from weakclip.data.datasets import (
    LabelIndexingError,
    SegmentationDataset,
    collate,
    read_cam_npy,
    read_class_names,
    read_split_lists,
)
from weakclip.data.labels import labels_from_mask, load_labels
from weakclip.data.transforms import TrainTransform, test_transform

__all__ = [
    "LabelIndexingError",
    "SegmentationDataset",
    "TrainTransform",
    "collate",
    "labels_from_mask",
    "load_labels",
    "read_cam_npy",
    "read_class_names",
    "read_split_lists",
    "test_transform",
]
