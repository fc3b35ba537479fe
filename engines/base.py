"""The interface every inference engine implements (torch, onnxruntime, tensorrt), and the registry that builds them.

``engine(windows) -> logits``: windows (B, 3, H, W) float32, (x_rgb_0_255 - mean) / std, H and W multiples of
``size_divisor`` and at most ``crop_size``; logits (B, K, H', W') float32.  CPU tensors in and out (the torch engine
also answers device tensors on their device).  A new engine is a module ``engines/<x>_engine.py`` with one
:class:`Engine` subclass named in ``_BUILTIN``, or any ``"package.module:Factory"`` callable ``(model_path, **opts)``.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from weakclip.data.filekind import expect
from weakclip.errors import UsageError

if TYPE_CHECKING:  # torch is imported by the engines themselves: `weakclip generate --help` does not wait for it
    import torch

# Registry name → module that implements it (imported only when that engine is asked for).
_BUILTIN: dict[str, str] = {
    "torch": "weakclip.engines.torch_engine",
    "onnxruntime": "weakclip.engines.ort_engine",
    "tensorrt": "weakclip.engines.trt_engine",
}
_REGISTERED: dict[str, Callable[..., Engine]] = {}

# Which model files (kinds of weakclip.data.filekind.sniff) each built-in engine reads; ``auto`` picks by the first.
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "torch": ("weakclip",),
    "onnxruntime": ("onnx",),
    "tensorrt": ("tensorrt", "onnx"),
}
_AUTO = {kinds[0]: name for name, kinds in MODEL_KINDS.items()}


class EngineError(RuntimeError):
    """An engine cannot be built or run (missing module/dependency, bad model file, wrong device)."""


class PrecisionError(EngineError):
    """A precision the engine, the model file or this machine cannot run (a usage error: exit status 2)."""


class Engine(abc.ABC):
    """Base class: model metadata as attributes, ``__call__(windows) -> logits``, ``close()``."""

    name: ClassVar[str] = ""  # registry name

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        size_divisor: int = 16,
    ) -> None:
        self.class_names: tuple[str, ...] = tuple(class_names)  # K names, index 0 = background
        self.crop_size: int = int(crop_size)  # largest window side the engine accepts (the training crop)
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)  # RGB 0-255 normalisation
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.size_divisor: int = int(size_divisor)  # window H, W must be multiples of this (ViT patch size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (B, 3, H, W) float32 normalised → logits (B, K, H', W') float32."""

    def close(self) -> None:  # noqa: B027 - optional hook, engines without resources need not override it
        """Release device memory, sessions, streams.  Idempotent."""

    def describe(self) -> dict[str, Any]:
        """What produced an output (written next to generated masks and into benchmark JSON)."""
        return {
            "engine": self.name,
            "class_names": list(self.class_names),
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def check_windows(self, windows: torch.Tensor) -> None:
        """Raise ValueError unless ``windows`` is (B, 3, H, W) float32 with H, W multiples of ``size_divisor``."""
        import torch

        if not isinstance(windows, torch.Tensor) or windows.ndim != 4 or windows.shape[1] != 3:
            shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
            raise ValueError(f"{self.name} engine: expected windows (B, 3, H, W), got {shape}")
        if windows.dtype != torch.float32:
            raise ValueError(f"{self.name} engine: expected float32 windows, got {windows.dtype}")
        h, w = windows.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"{self.name} engine: window {h}×{w} is not a multiple of {self.size_divisor}")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity mask; all cores off Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def engine_fields_from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """``Engine.__init__`` keyword arguments from an exported ONNX model's metadata_props (see export/to_onnx.py)."""
    return dict(
        class_names=json.loads(meta["class_names"]),
        crop_size=int(meta["crop_size"]),
        mean=json.loads(meta["mean"]),
        std=json.loads(meta["std"]),
        size_divisor=int(meta.get("size_divisor", 16)),
    )


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    """Make ``get_engine(name, model_path, **opts)`` call ``factory(model_path, **opts)`` (tests, plug-ins)."""
    _REGISTERED[name] = factory


def available_engines() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def _engine_class(module: Any, name: str) -> Callable[..., Engine]:
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Engine) and obj.__module__ == module.__name__ and obj.name == name
    ]
    if len(found) != 1:
        raise EngineError(
            f"{module.__name__} must define exactly one Engine subclass with name = {name!r}, found {len(found)}"
        )
    return found[0]


def _resolve(name: str) -> Callable[..., Engine]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module_name = _BUILTIN[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                path = module_name.replace(".", os.sep) + ".py"
                raise EngineError(f"engine {name!r} is not available: {path} is missing from this install") from None
            raise EngineError(
                f"engine {name!r} needs the Python package {e.name!r}, which is not installed ({e})"
            ) from None
        return _engine_class(module, name)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise EngineError(f"cannot import engine factory {name!r}: {e}") from None
    raise EngineError(f"unknown engine {name!r}; choose one of {available_engines()} or give 'module:Factory'")


def auto_engine(model_path: str | os.PathLike) -> str:
    """The engine for a model file by its kind; anything else is a one-line UsageError saying what the file is."""
    return _AUTO[expect(model_path, tuple(_AUTO), "--engine auto", option="--model")]


def check_model_file(name: str, model_path: str | os.PathLike | None) -> None:
    """Refuse (one-line UsageError) a model file of the wrong kind for a built-in engine, before building it."""
    if name not in MODEL_KINDS:
        return
    if model_path is None:
        raise UsageError(f"the {name} engine needs --model (a {' or '.join(MODEL_KINDS[name])} file)")
    if isinstance(model_path, (str, os.PathLike)):  # else an in-memory model (the torch engine takes an nn.Module)
        expect(model_path, MODEL_KINDS[name], f"the {name} engine", option="--model")


def check_engine_options(name: str, opts: dict[str, Any]) -> None:
    """Refuse (one-line UsageError) options the engine's constructor does not take, listing those it does."""
    params = inspect.signature(_resolve(name)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return  # a factory taking **kwargs takes anything
    known = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise UsageError(f"engine option(s) {unknown} are not options of the {name} engine; it takes {known}")


def get_engine(name: str, model_path: str | os.PathLike | None, **opts: Any) -> Engine:
    """Build engine ``name`` (built-in, registered or 'module:Factory'); a wrong model file or option is a UsageError."""
    check_model_file(name, model_path)
    check_engine_options(name, opts)
    engine = _resolve(name)(model_path, **opts)
    if not isinstance(engine, Engine):
        raise EngineError(f"engine factory {name!r} returned {type(engine).__name__}, not an Engine")
    return engine
