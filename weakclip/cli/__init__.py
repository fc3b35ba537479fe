"""``weakclip <subcommand> [options]``: each subcommand hands the rest of the command line to its tool's
``main(argv)``, imported only when it runs (``--help`` and ``--version`` import neither torch nor any tool).
The ``weakclip-<name>`` console scripts are aliases of the subcommands.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from weakclip import __version__
from weakclip.errors import EXIT_OK, EXIT_USAGE, RuntimeFailure, run_command
from weakclip.progress import setup_logging

PROG = "weakclip"

# subcommand → (module whose main(argv) runs it, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("weakclip.training.train", "train WeakCLIP on CAM seeds (YAML/TOML config + KEY=VALUE overrides)"),
    "export": ("weakclip.export.to_onnx", "export a checkpoint to ONNX (text side precomputed; fp16, int8, custom op)"),
    "generate": ("weakclip.cli.generate", "pseudo masks for a dataset (torch / onnxruntime / tensorrt engines)"),
    "evaluate": ("weakclip.cli.evaluate", "mIoU of masks against ground truth (per-class table, FP/FN)"),
    "convert": ("weakclip.cli.convert", "official hustvl/WeakCLIP .pth checkpoint → our .safetensors"),
    "synthetic": ("weakclip.cli.synthetic", "write a synthetic VOC-layout dataset (images, GT, seeds, labels)"),
    "check-data": ("weakclip.cli.check_data", "check a dataset folder before a long run (counts, lists, classes)"),
    "report": ("weakclip.cli.report", "one HTML page comparing mask runs: settings, per-class IoU, confusion, gallery"),
    "seeds": ("weakclip.cli.seeds", "CLIP-ES seeds (CAMs) from image-level labels"),
    "bench": ("weakclip.cli", "benchmarks: training, loss-ablation, cpu-engines, tier-masks, gpu-e2e, cuda-coattn"),
    "demo": ("weakclip.cli.demo", "end to end on synthetic data: train → ONNX → masks → mIoU, images/s"),
}

# `weakclip bench <name>` → module whose main(argv) runs it
BENCHMARKS: dict[str, tuple[str, str]] = {
    "training": ("weakclip.benchmarks.bench_training", "training step time and peak memory vs full fine-tuning"),
    "loss-ablation": ("weakclip.benchmarks.bench_loss_ablation", "seed / +boundary / +aux losses on synthetic data"),
    "cpu-engines": (
        "weakclip.benchmarks.bench_cpu_engines",
        "CPU engines by tier (fp32, bf16, int8) vs PyTorch eager; torch.compile, TorchScript peers",
    ),
    "tier-masks": ("weakclip.benchmarks.bench_tier_masks", "mIoU change of each CPU tier on the trained demo model"),
    "gpu-e2e": ("weakclip.benchmarks.bench_gpu_e2e", "end-to-end GPU engines (torch, ORT CUDA, TensorRT)"),
    "cuda-coattn": ("weakclip.benchmarks.bench_cuda_coattn", "fused CUDA co-attention kernel vs PyTorch"),
    "gpu-results": ("weakclip.benchmarks.gpu_results", "gpu_check.sh output -> results/gpu_*, README GPU rows"),
}


def _table(entries: dict[str, tuple[str, str]]) -> str:
    width = max(len(k) for k in entries) + 2
    return "\n".join(f"  {k.ljust(width)}{desc}" for k, (_, desc) in entries.items())


def help_text() -> str:
    return (
        f"usage: {PROG} [-h] [--version] [-v | -q] <subcommand> [options]\n\nWeakCLIP: train, export to ONNX, generate pseudo masks, evaluate, benchmark.\n\n"
        f"subcommands:\n{_table(COMMANDS)}\n\n"
        "options:\n"
        "  -h, --help     show this help and exit\n"
        "  --version      print the version and exit\n"
        "  -v, --verbose  debug log lines\n"
        "  -q, --quiet    warnings and errors only\n"
        "  --debug        print the traceback of a failure (also WEAKCLIP_DEBUG=1)\n\n"
        f"`{PROG} <subcommand> --help` shows a subcommand's options.  Progress: a bar on a terminal, otherwise one line\n"
        "every 30 s (WEAKCLIP_PROGRESS_INTERVAL=SECONDS, WEAKCLIP_PROGRESS=auto|bar|lines|off)."
    )


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _unknown(kind: str, name: str, choices: Sequence[str], prog: str) -> int:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return _usage_error(f"unknown {kind} '{name}'{hint}; choose from {', '.join(choices)} (`{prog} --help`)")


def run_tool(module: str, argv: Sequence[str], prog: str) -> int:
    """Import ``module`` and run its ``main(argv)`` inside the error boundary (an absent module is one line too)."""

    def tool(args: Sequence[str] | None) -> int | None:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".")):
                raise RuntimeFailure(f"{prog} is not available in this installation (no module {module})") from None
            raise
        main: Callable[[Sequence[str] | None], int | None] | None = getattr(mod, "main", None)
        if main is None:
            raise RuntimeFailure(f"{prog}: {module} has no main()")
        return getattr(main, "__wrapped__", main)(args)  # the tool's own main, without a second boundary

    old_argv0 = sys.argv[:1]
    sys.argv[:1] = [prog]  # argparse's default prog for tools that do not set one
    try:
        return run_command(tool, argv, prog)
    finally:
        sys.argv[:1] = old_argv0


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``weakclip bench <name> [options]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = f"{PROG} bench"
    text = (
        f"usage: {prog} <name> [options]\n\nbenchmarks (results under --out; default ./weakclip_bench/):\n"
        f"{_table(BENCHMARKS)}\n\n`{prog} <name> --help` shows a benchmark's options."
    )
    if not args:
        return _usage_error(f"name a benchmark: {', '.join(BENCHMARKS)} (`{prog} --help`)")
    if args[0] in ("-h", "--help"):
        print(text)
        return EXIT_OK
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        return _unknown("benchmark", name, list(BENCHMARKS), prog)
    return run_tool(BENCHMARKS[name][0], rest, f"{prog} {name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    level = logging.INFO
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            print(help_text())
            return EXIT_OK
        if opt in ("-V", "--version"):
            print(f"{PROG} {__version__}")
            return EXIT_OK
        if opt == "--debug":
            os.environ["WEAKCLIP_DEBUG"] = "1"
        elif opt in ("-v", "--verbose"):
            level = logging.DEBUG
        elif opt in ("-q", "--quiet"):
            level = logging.WARNING
        else:
            return _usage_error(f"unknown option '{opt}' before the subcommand (`{PROG} --help`)")
    if not args:
        return _usage_error(f"name a subcommand: {', '.join(COMMANDS)} (`{PROG} --help`)")
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        return _unknown("subcommand", name, list(COMMANDS), PROG)
    setup_logging(level)
    if name == "bench":
        return bench_main(rest)
    return run_tool(COMMANDS[name][0], rest, f"{PROG} {name}")


def _alias(name: str) -> Callable[[], int]:
    def entry() -> int:
        setup_logging()
        return run_tool(COMMANDS[name][0], sys.argv[1:], f"{PROG}-{name}")

    entry.__name__ = entry.__qualname__ = f"alias_{name.replace('-', '_')}"
    entry.__doc__ = f"console script weakclip-{name} = weakclip {name}"
    return entry


# console-script aliases (pyproject.toml [project.scripts]); named alias_* beside the command modules weakclip.cli.*
alias_train = _alias("train")
alias_export = _alias("export")
alias_generate = _alias("generate")
alias_evaluate = _alias("evaluate")
alias_convert = _alias("convert")
alias_synthetic = _alias("synthetic")
alias_check_data = _alias("check-data")
alias_seeds = _alias("seeds")


if __name__ == "__main__":
    sys.exit(main())
