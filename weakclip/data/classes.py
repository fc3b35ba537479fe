"""Class-name lists.  Index 0 is always the literal word ``background``."""

# PASCAL VOC 2012, spelled as in mmseg (K = 21).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# COCO 2014 in contiguous indexing (K = 81): background + the 80 object categories in category-id order.
COCO_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# The 10 category ids of COCO's original 91-slot list that have no annotations in COCO 2014/2017, with the names the
# official hustvl/WeakCLIP ``COCODataset.CLASSES`` gives them.
COCO_UNUSED_CATEGORY_NAMES: dict[int, str] = {
    12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate", 66: "mirror", 68: "window",
    69: "desk", 71: "door", 83: "blender",
}  # fmt: skip

# COCO category ids (1..90, with gaps) of the 80 classes above, in the same order: the "91-slot" layout used by
# the official COCO masks maps class i (1-based, contiguous) to COCO_CATEGORY_IDS[i - 1].
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(c for c in range(1, 91) if c not in COCO_UNUSED_CATEGORY_NAMES)

# COCO in the official 91-slot layout (K = 91): index = COCO category id (1..90, background 0), unused slots such as
# "street sign" kept: the official COCODataset.CLASSES order and head size (what ``coco_layout="official91"`` reads).
_BY_ID = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:])) | COCO_UNUSED_CATEGORY_NAMES
COCO_OFFICIAL91_CLASSES: tuple[str, ...] = ("background", *(_BY_ID[c] for c in range(1, 91)))

assert len(VOC_CLASSES) == 21 and len(COCO_CLASSES) == 81 and len(COCO_CATEGORY_IDS) == 80

# Built-in class lists by head size K (what weakclip.model.convert_official picks when the checkpoint names none).
CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "voc21": VOC_CLASSES,
    "coco81": COCO_CLASSES,
    "coco_official91": COCO_OFFICIAL91_CLASSES,
}


# Input normalisation of the official code: ImageNet mean/std in 0-255 RGB (not CLIP's own statistics).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
