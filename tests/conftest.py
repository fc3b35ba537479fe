import os

# Never let open_clip / huggingface_hub try to download weights during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_EXPORT_SEED = 0


def tiny_model():
    """The tiny preset at crop 512 (so H, W up to 512 are exportable), fixed seed, eval mode."""
    import torch

    import weakclip

    torch.manual_seed(TINY_EXPORT_SEED)
    return weakclip.build_model("tiny", crop_size=512).eval()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(export folder, checkpoint) of one tiny export with --custom-op --fp16, shared by the export/engine tests."""
    import weakclip
    from weakclip.export import to_onnx

    base = tmp_path_factory.mktemp("weakclip_tiny_export")
    out, ckpt = base / "onnx", base / "tiny.safetensors"
    weakclip.save_checkpoint(tiny_model(), ckpt)
    rc = to_onnx.main(["--checkpoint", str(ckpt), "--out", str(out), "--custom-op", "--fp16"])
    assert rc == 0, "weakclip-export failed (its self-check or an exporter error; see the captured output)"
    return out, ckpt
