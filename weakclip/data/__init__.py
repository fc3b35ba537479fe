"""Data: VOC-layout datasets, the training augmentation, image-level label readers and the synthetic generator."""

from weakclip.data.datasets import SegmentationDataset, collate, read_class_names
from weakclip.data.labels import load_labels
from weakclip.data.transforms import TrainTransform

__all__ = ["SegmentationDataset", "TrainTransform", "collate", "load_labels", "read_class_names"]
