"""Prompt sets for CLIP seed generation (:mod:`weakclip.masks.seeds`), transcribed from CLIP-ES (linyq2117/CLIP-ES:
``clip_text.py`` class and background names, ``generate_cams_voc12.py`` / ``generate_cams_coco14.py`` template and
box thresholds).  Each set maps *our* class names to CLIP-ES's prompt text, kept verbatim (commas included)."""

from __future__ import annotations

from weakclip.data.classes import COCO_CLASSES, VOC_CLASSES

# The one template CLIP-ES uses for foreground and background texts (both generate_cams_*.py scripts:
# ``zeroshot_classifier(..., ['a clean origami {}.'], model)``).
CLIP_ES_TEMPLATE = "a clean origami {}."

# clip_text.py BACKGROUND_CATEGORY (VOC): 25 background concepts that compete in the softmax.
VOC_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)  # fmt: skip

# clip_text.py BACKGROUND_CATEGORY_COCO: without "keyboard" (a COCO class) and "sign" (COCO has "stop sign").
COCO_BACKGROUND = tuple(b for b in VOC_BACKGROUND if b not in ("keyboard", "sign"))

# clip_text.py new_class_names (VOC; our names are the mmseg spelling = CLIP-ES's class_names): every class is
# prompted with its own name except these.
_VOC_RENAMED = {"bird": "bird avian", "chair": "chair seat", "person": "person with clothes,people,human"}
VOC_CLASS_PROMPTS = {n: n for n in VOC_CLASSES[1:]} | _VOC_RENAMED | {"tvmonitor": "tvmonitor screen"}

# clip_text.py new_class_names_coco, keyed by our COCO 2014 names (same category order): the VOC renamings, VOC
# spellings (motorbike, aeroplane, sofa, pottedplant, diningtable, tvmonitor) and its own; "sknowboard" is kept.
COCO_CLASS_PROMPTS = {n: n for n in COCO_CLASSES[1:]} | _VOC_RENAMED | {
    "motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
    "dining table": "diningtable", "tv": "tvmonitor screen", "backpack": "backpack,bag", "umbrella": "umbrella,parasol",
    "handbag": "handbag,purse", "tie": "necktie", "snowboard": "sknowboard", "baseball glove": "glove",
    "spoon": "dessertspoon", "remote": "remote control", "hair drier": "hairdrier,blowdrier",
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
    },
    "coco": {
        "template": CLIP_ES_TEMPLATE,
        "classes": COCO_CLASS_PROMPTS,
        "background": COCO_BACKGROUND,
        "box_threshold": 0.7,
    },
    "generic": {
        "template": CLIP_ES_TEMPLATE,
        "classes": {},
        "background": VOC_BACKGROUND,
        "box_threshold": 0.4,
    },
}
