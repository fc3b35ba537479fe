"""Run by torchrun from tests/test_training.py: one training step per rank, then a digest of the weights."""

import hashlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weakclip.training.config import read_config  # noqa: E402
from weakclip.training.train import setup_distributed, train  # noqa: E402


def main() -> None:
    data_root, work_dir, out_dir = sys.argv[1:4]
    cfg = read_config(
        None,
        [
            f"data.root={data_root}",
            f"work_dir={work_dir}",
            "train.iters=2",
            "train.batch_size=2",
            "schedule.val_interval=1000",
            "data.num_workers=0",
            "device=cpu",
        ],
    )
    rank, world, device = setup_distributed("cpu")
    model = train(cfg, rank, world, device, resume=False, progress=False)
    # Parameters (weights). BatchNorm running statistics are per-rank on CPU (SyncBN needs CUDA), as in any DDP run.
    h = hashlib.sha256()
    for k, v in sorted(model.named_parameters()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    Path(out_dir, f"rank{rank}.txt").write_text(f"{world} {h.hexdigest()}\n")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
