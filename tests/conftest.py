import os

# Never let open_clip / huggingface_hub try to download weights during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
