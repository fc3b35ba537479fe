"""Data: VOC-layout datasets (datasets), the training augmentation (transforms), image-level labels (labels), the
synthetic generator (synthetic), file I/O (io).  Nothing is imported here: a command's --help does not wait for torch."""
