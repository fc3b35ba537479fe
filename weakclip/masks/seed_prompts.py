"""Prompt sets for CLIP seed generation (:mod:`weakclip.masks.seeds`): data only, transcribed from CLIP-ES.

Source: linyq2117/CLIP-ES (Lin et al., "CLIP Is Also an Efficient Segmenter", CVPR 2023), ``clip_text.py`` (class
and background names), ``generate_cams_voc12.py`` / ``generate_cams_coco14.py`` (template, box thresholds).

Each set maps *our* class names (``weakclip.data.classes``: mmseg VOC spelling, COCO 2014 names) to the text CLIP-ES
puts in the template.  CLIP-ES renames a few classes to help CLIP ("bird avian", "chair seat",
"person with clothes,people,human", "tvmonitor screen", ...); those strings are kept verbatim, commas included.
A class missing from a set's ``classes`` is prompted with its own name.
"""

from __future__ import annotations

# The one template CLIP-ES uses for foreground and background texts (both generate_cams_*.py scripts:
# ``zeroshot_classifier(..., ['a clean origami {}.'], model)``).
CLIP_ES_TEMPLATE = "a clean origami {}."

# clip_text.py BACKGROUND_CATEGORY (VOC): 25 background concepts that compete in the softmax.
VOC_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)  # fmt: skip

# clip_text.py BACKGROUND_CATEGORY_COCO: the VOC list without "keyboard" (a COCO class) and "sign" (COCO has
# "stop sign") — 23 entries.
COCO_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley", "bridge",
)  # fmt: skip

# clip_text.py class_names → new_class_names (VOC; our names are the mmseg spelling = CLIP-ES's class_names).
VOC_CLASS_PROMPTS: dict[str, str] = {
    "aeroplane": "aeroplane", "bicycle": "bicycle", "bird": "bird avian", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair seat", "cow": "cow", "diningtable": "diningtable",
    "dog": "dog", "horse": "horse", "motorbike": "motorbike", "person": "person with clothes,people,human",
    "pottedplant": "pottedplant", "sheep": "sheep", "sofa": "sofa", "train": "train", "tvmonitor": "tvmonitor screen",
}  # fmt: skip

# clip_text.py new_class_names_coco, keyed by our COCO 2014 names (weakclip.data.classes.COCO_CLASSES; the two lists are in
# the same category order, CLIP-ES spells some VOC-style: motorbike, aeroplane, sofa, pottedplant, diningtable,
# tvmonitor).  "sknowboard" is CLIP-ES's spelling and is kept.
COCO_CLASS_PROMPTS: dict[str, str] = {
    "person": "person with clothes,people,human", "bicycle": "bicycle", "car": "car", "motorcycle": "motorbike",
    "airplane": "aeroplane", "bus": "bus", "train": "train", "truck": "truck", "boat": "boat",
    "traffic light": "traffic light", "fire hydrant": "fire hydrant", "stop sign": "stop sign",
    "parking meter": "parking meter", "bench": "bench", "bird": "bird avian", "cat": "cat", "dog": "dog",
    "horse": "horse", "sheep": "sheep", "cow": "cow", "elephant": "elephant", "bear": "bear", "zebra": "zebra",
    "giraffe": "giraffe", "backpack": "backpack,bag", "umbrella": "umbrella,parasol", "handbag": "handbag,purse",
    "tie": "necktie", "suitcase": "suitcase", "frisbee": "frisbee", "skis": "skis", "snowboard": "sknowboard",
    "sports ball": "sports ball", "kite": "kite", "baseball bat": "baseball bat", "baseball glove": "glove",
    "skateboard": "skateboard", "surfboard": "surfboard", "tennis racket": "tennis racket", "bottle": "bottle",
    "wine glass": "wine glass", "cup": "cup", "fork": "fork", "knife": "knife", "spoon": "dessertspoon",
    "bowl": "bowl", "banana": "banana", "apple": "apple", "sandwich": "sandwich", "orange": "orange",
    "broccoli": "broccoli", "carrot": "carrot", "hot dog": "hot dog", "pizza": "pizza", "donut": "donut",
    "cake": "cake", "chair": "chair seat", "couch": "sofa", "potted plant": "pottedplant", "bed": "bed",
    "dining table": "diningtable", "toilet": "toilet", "tv": "tvmonitor screen", "laptop": "laptop",
    "mouse": "mouse", "remote": "remote control", "keyboard": "keyboard", "cell phone": "cell phone",
    "microwave": "microwave", "oven": "oven", "toaster": "toaster", "sink": "sink", "refrigerator": "refrigerator",
    "book": "book", "clock": "clock", "vase": "vase", "scissors": "scissors", "teddy bear": "teddy bear",
    "hair drier": "hairdrier,blowdrier", "toothbrush": "toothbrush",
}  # fmt: skip

# Named prompt sets.  box_threshold: the class-aware box mask threshold of scoremap2bbox (generate_cams_voc12.py 0.4,
# generate_cams_coco14.py 0.7).  "generic" is ours (not in CLIP-ES): for other datasets, class names as given,
# the VOC background list minus any entry equal to one of the dataset's class names (CLIP-ES removed COCO's own
# classes from its COCO list in the same way), VOC's box threshold.
PROMPT_SETS: dict[str, dict] = {
    "voc": {
        "template": CLIP_ES_TEMPLATE,
        "classes": VOC_CLASS_PROMPTS,
        "background": VOC_BACKGROUND,
        "box_threshold": 0.4,
        "source": "CLIP-ES clip_text.py (new_class_names, BACKGROUND_CATEGORY), generate_cams_voc12.py",
    },
    "coco": {
        "template": CLIP_ES_TEMPLATE,
        "classes": COCO_CLASS_PROMPTS,
        "background": COCO_BACKGROUND,
        "box_threshold": 0.7,
        "source": "CLIP-ES clip_text.py (new_class_names_coco, BACKGROUND_CATEGORY_COCO), generate_cams_coco14.py",
    },
    "generic": {
        "template": CLIP_ES_TEMPLATE,
        "classes": {},
        "background": VOC_BACKGROUND,
        "box_threshold": 0.4,
        "source": "weakclip (CLIP-ES template and VOC background list; class names as given)",
    },
}
