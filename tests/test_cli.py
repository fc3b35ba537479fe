"""The `weakclip` command (weakclip/cli.py), the progress / start-up / logging helpers (weakclip/progress.py) and the
benchmarks' output folder: in-process and in seconds (the installed wheel is tests/test_wheel.py)."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import weakclip
from weakclip import cli, progress

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ---------------------------------------------------------------------------------------------------------------
# the dispatcher


def test_version_and_help_import_no_tool_and_no_torch() -> None:
    code = (
        "import sys\nfrom weakclip.cli import main\n"
        "assert main(['--version']) == 0 and main(['--help']) == 0 and main(['bench', '--help']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'cv2', 'open_clip')"
        " or m.startswith(('weakclip.training', 'weakclip.engines', 'weakclip.export', 'weakclip.benchmarks')))\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"weakclip {weakclip.__version__}"


def test_version_is_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"weakclip {weakclip.__version__}"
    assert importlib.metadata.version("weakclip") == weakclip.__version__
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "weakclip.__version__"}


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "export", "generate", "evaluate", "convert", "synthetic", "check-data", "seeds", "bench"):
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name
    assert set(cli.COMMANDS) == {
        "train",
        "export",
        "generate",
        "evaluate",
        "convert",
        "synthetic",
        "check-data",
        "seeds",
        "bench",
        "demo",
        "report",
    }
    assert set(cli.BENCHMARKS) == {
        "training",
        "loss-ablation",
        "cpu-engines",
        "tier-masks",
        "gpu-e2e",
        "cuda-coattn",
        "gpu-results",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tran"], "error: unknown subcommand 'tran' (did you mean 'train'?)"),
        ([], "error: name a subcommand: train, export"),
        (["--bogus", "train"], "error: unknown option '--bogus' before the subcommand"),
        (["bench"], "error: name a benchmark: training, loss-ablation"),
        (["bench", "cpu"], "error: unknown benchmark 'cpu'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), cap.err


def _fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    name = f"weakclip_fake_tool_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_subcommand_gets_the_rest_of_argv_and_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _fake_tool(
        tmp_path,
        monkeypatch,
        "import sys\ndef main(argv):\n    print('argv', argv, 'prog', sys.argv[0])\n    return 3 if argv else None\n",
    )
    monkeypatch.setitem(cli.COMMANDS, "fake", (mod, "a fake tool"))
    monkeypatch.setitem(cli.BENCHMARKS, "fakebench", (mod, "a fake benchmark"))
    argv0 = sys.argv[0]
    assert cli.main(["fake", "a", "--b", "-c"]) == 3
    assert capsys.readouterr().out.strip() == "argv ['a', '--b', '-c'] prog weakclip fake"
    assert sys.argv[0] == argv0  # restored
    assert cli.main(["fake"]) == 0  # main() returning None is success
    capsys.readouterr()
    assert cli.main(["-q", "bench", "fakebench", "--out", "x"]) == 3
    assert capsys.readouterr().out.strip() == "argv ['--out', 'x'] prog weakclip bench fakebench"


def test_missing_tool_module_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "check-data", ("weakclip.no_such_module_here", "x"))
    assert cli.main(["check-data", "somewhere"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: weakclip check-data is not available in this installation (no module weakclip.no_such_module_here)"
    ]


@pytest.mark.parametrize("when", ["import", "run"])
def test_missing_optional_dependency_names_the_extra(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raise_it = "raise ModuleNotFoundError(\"No module named 'onnxscript'\", name='onnxscript')"
    body = f"{raise_it}\n" if when == "import" else f"def main(argv):\n    {raise_it}\n"
    mod = _fake_tool(tmp_path, monkeypatch, body)
    monkeypatch.setitem(cli.COMMANDS, "fake", (mod, "x"))
    assert cli.main(["fake"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: weakclip fake needs the 'onnxscript' module: pip install 'weakclip[export]'"
    ]


def test_every_subcommand_module_has_a_main_and_every_alias_is_a_subcommand() -> None:
    folders = {"engines", "export", "training", "benchmarks"}  # weakclip.<folder> = the repository's <folder>/
    for module, _ in [*cli.COMMANDS.values(), *cli.BENCHMARKS.values()]:
        parts = module.split(".")[1:]
        src = ROOT.joinpath(*parts) if parts[0] in folders else ROOT.joinpath("weakclip", *parts)
        src = src.with_suffix(".py")
        if src.name == "cli.py":  # weakclip.cli is the package weakclip/cli/
            src = src.with_suffix("") / "__init__.py"
        tree = ast.parse(src.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in names or module == "weakclip.cli", module
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.pop("weakclip") == "weakclip.cli:main"
    assert set(scripts) >= {f"weakclip-{n}" for n in ("train", "export", "generate", "evaluate", "synthetic")}
    assert {"weakclip-convert", "weakclip-check-data"} <= set(scripts)
    for script, target in scripts.items():
        sub = script.removeprefix("weakclip-")
        module, func = target.split(":")
        assert module == "weakclip.cli" and func == f"alias_{sub.replace('-', '_')}" and sub in cli.COMMANDS, script
        assert getattr(cli, func).__doc__ == f"console script weakclip-{sub} = weakclip {sub}", script


def test_alias_runs_the_subcommand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _fake_tool(tmp_path, monkeypatch, "def main(argv):\n    print('argv', argv)\n    return 2\n")
    monkeypatch.setitem(cli.COMMANDS, "synthetic", (mod, "x"))
    monkeypatch.setattr(sys, "argv", ["weakclip-synthetic", "--out", "d"])
    assert cli.alias_synthetic() == 2
    assert capsys.readouterr().out.strip() == "argv ['--out', 'd']"


def test_python_m_weakclip_and_demo_py_are_the_same_command() -> None:
    for cmd in ([sys.executable, "-m", "weakclip", "demo", "--help"], [sys.executable, "demo.py", "--help"]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("usage: weakclip demo"), p.stdout


# ---------------------------------------------------------------------------------------------------------------
# progress


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress, "_now", clock)
    monkeypatch.delenv("WEAKCLIP_PROGRESS", raising=False)
    out = _Stream(tty=False)
    bar = progress.progress(total=100, desc="generate", unit="img", interval=30, file=out)
    assert bar.mode == "lines"
    for _ in range(10):  # 10 images in 20 s: no line yet
        clock.t += 2
        bar.update(1)
    assert out.getvalue() == ""
    clock.t += 10  # 30 s: one line
    bar.set_postfix(loss="0.412")
    bar.update(5)
    assert out.getvalue().splitlines() == [
        "[generate] 15/100 img (15.0 %), 0.50 img/s, elapsed 30 s, ETA 2 min 50 s, loss=0.412"
    ]
    clock.t += 29
    bar.update(1)  # 29 s after the last line: nothing
    assert len(out.getvalue().splitlines()) == 1
    clock.t += 1
    bar.update(1)
    assert len(out.getvalue().splitlines()) == 2
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().splitlines()[-1] == "[generate] done: 17/100 img in 1 min 00 s (0.28 img/s), loss=0.412"
    assert len(out.getvalue().splitlines()) == 3


def test_progress_iterable_wrapper_initial_unknown_total_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress, "_now", clock)
    monkeypatch.setenv("WEAKCLIP_PROGRESS_INTERVAL", "0")
    out = _Stream(tty=False)

    def items():
        for i in range(3):
            clock.t += 1
            yield i

    assert list(progress.progress(items(), desc="seeds", unit="img", file=out)) == [0, 1, 2]
    assert out.getvalue().splitlines() == [
        "[seeds] 1 img, 1.00 img/s, elapsed 1 s",
        "[seeds] 2 img, 1.00 img/s, elapsed 2 s",
        "[seeds] 3 img, 1.00 img/s, elapsed 3 s",
        "[seeds] done: 3 img in 3 s (1.00 img/s)",
    ]
    out = _Stream(tty=False)
    with progress.progress(total=10, initial=4, desc="train", file=out) as bar:  # resumed at 4/10
        clock.t += 2
        bar.update(2)
    assert out.getvalue().splitlines() == [
        "[train] 6/10 it (60.0 %), 1.00 it/s, elapsed 2 s, ETA 4 s",
        "[train] done: 6/10 it in 2 s (1.00 it/s)",
    ]
    out = _Stream(tty=False)
    with progress.progress(total=10, desc="short", file=out, interval=30) as bar:  # shorter than the interval
        clock.t += 29
        bar.update(10)
    assert out.getvalue() == ""  # no periodic line, so no final line either
    monkeypatch.setenv("WEAKCLIP_PROGRESS_INTERVAL", "soon")  # a bad value: the default, with a warning
    assert progress.progress(total=1, file=_Stream(tty=False)).interval == progress.DEFAULT_INTERVAL


def test_progress_bar_on_a_terminal_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEAKCLIP_PROGRESS", raising=False)
    tty = _Stream(tty=True)
    bar = progress.progress(total=3, desc="x", file=tty)
    assert bar.mode == "bar" and bar._bar is not None
    bar.update(3)
    bar.close()
    assert "3/3" in tty.getvalue()
    quiet = _Stream(tty=False)
    bar = progress.progress(range(4), disable=True, file=quiet)
    assert list(bar) == [0, 1, 2, 3] and bar.n == 4 and quiet.getvalue() == ""
    monkeypatch.setenv("WEAKCLIP_PROGRESS", "lines")
    assert progress.progress(total=1, file=_Stream(tty=True)).mode == "lines"
    monkeypatch.setenv("WEAKCLIP_PROGRESS", "off")
    assert progress.progress(total=1, file=_Stream(tty=True)).mode == "off"


def test_progress_arguments() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    progress.add_progress_arguments(ap)
    assert progress.progress_options(ap.parse_args([])) == {}
    args = ap.parse_args(["--progress-mode", "lines", "--progress-interval", "5"])
    assert progress.progress_options(args) == {"mode": "lines", "interval": 5.0}


def test_format_duration() -> None:
    assert [progress.format_duration(s) for s in (0, 59.4, 61, 3599, 3600 * 2 + 7 * 60, float("nan"))] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "59 min 59 s",
        "2 h 07 min",
        "?",
    ]


def test_startup_line() -> None:
    line = progress.startup_line(
        "generate",
        engine="onnxruntime",
        model=Path("runs/x/weakclip.onnx"),
        precision="fp32",
        views="1 (scale 1)",
        device="cpu",
        threads=2,
        crf="none",
        note="6 image(s) to do, 0 already finished",
    )
    assert line == (
        "weakclip generate: engine onnxruntime, model runs/x/weakclip.onnx, precision fp32, views 1 (scale 1), "
        "device cpu, threads 2, crf none; 6 image(s) to do, 0 already finished"
    )
    assert progress.startup_line("weakclip-seeds", device="cpu", threads=1, image_size=448) == (
        "weakclip-seeds: device cpu, threads 1, image size 448"
    )


def test_setup_logging_info_on_stdout_warnings_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    name = "weakclip.test_cli_logging"
    lg = progress.setup_logging(logging.INFO, logger=name)
    progress.setup_logging(logging.INFO, logger=name)  # idempotent: one pair of handlers
    assert len(lg.handlers) == 2
    logging.getLogger(f"{name}.child").info("starting")
    logging.getLogger(f"{name}.child").debug("hidden")
    logging.getLogger(f"{name}.child").warning("3 files skipped")
    cap = capsys.readouterr()
    assert cap.out == "starting\n" and cap.err == "warning: 3 files skipped\n"


# ---------------------------------------------------------------------------------------------------------------
# benchmarks write under --out, never into the package


def test_benchmark_results_go_under_out_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weakclip.benchmarks import common

    monkeypatch.chdir(tmp_path)
    j, m = common.write_results("x", {"a": 1}, "| a |\n")
    assert j == Path("weakclip_bench/x.json") and (tmp_path / "weakclip_bench" / "x.md").read_text() == "| a |\n"
    for src in sorted((ROOT / "benchmarks").glob("*.py")):
        text = src.read_text()
        assert not re.search(r"Path\(__file__\)[^\n]*results", text), f"{src.name} writes beside its own file"
        for default in re.findall(r'add_argument\(\s*"--out"[^)]*default=([^,)]+)', text):
            assert default.strip() in ("DEFAULT_OUT", "str(DEFAULT_OUT)"), (src.name, default)
