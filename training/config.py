"""The training configuration: nested dataclasses, a comment per field (``weakclip train --help`` lists them).

A run's config is the defaults below ← a YAML/TOML file or a shipped config name (``training/configs/<name>.yaml``)
← dotted ``KEY=VALUE`` overrides (values parsed as YAML).  ``model.overrides`` is a free mapping of
:class:`weakclip.model.config.WeakCLIPConfig` fields, checked when the model is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from weakclip.errors import UsageError

DEFAULT_CONFIG = "synthetic_tiny"  # the shipped name of the defaults (its file sets nothing)


@dataclass
class ModelCfg:
    preset: str = "tiny"  # weakclip.model.config preset: tiny, vit_b16_voc, vit_b16_coco
    clip_weights: str | None = None  # openai, or a local ViT-B-16.pt / .safetensors state dict; null = random init
    overrides: dict[str, Any] = field(default_factory=dict)  # WeakCLIPConfig fields replacing the preset's


@dataclass
class DataCfg:
    root: str = "demo_out/data"  # dataset folder; the other data.* paths are relative to it
    image_dir: str = "JPEGImages"  # images, <name>.jpg
    seed_dir: str = "SeedMasks"  # seed masks for the training list, <name>.png (palette or L)
    gt_dir: str = "SegmentationClass"  # ground-truth masks for validation, <name>.png
    train_lists: list[str] = field(default_factory=lambda: ["train.txt"])  # the training lists (their union is used)
    val_list: str | None = "val.txt"  # validation list; null = no validation
    labels: str | None = "cls_labels.json"  # image-level labels (cls_labels.npy / JSON / text); null = from the seeds
    num_workers: int = 1  # threads decoding and augmenting samples; 0 = in the training loop
    max_bad_fraction: float = 0.01  # the run stops when more of the samples than this are unreadable


@dataclass
class TrainCfg:
    iters: int = 600  # total iterations
    batch_size: int = 8  # samples per iteration and process
    lr: float = 1.0e-3  # AdamW learning rate after the warm-up
    weight_decay: float = 3.0e-5  # AdamW weight decay
    warmup_iters: int = 50  # linear warm-up from lr·warmup_ratio to lr
    warmup_ratio: float = 1.0e-3  # learning rate at iteration 0, as a fraction of lr
    min_lr: float = 1.0e-6  # the cosine decay reaches it at train.iters
    amp: bool = True  # fp16 autocast and loss scaling (CUDA only)
    seed: int = 504  # initial weights, sample order and augmentation


@dataclass
class LossCfg:
    seed: float = 1.0  # weight of the seed (partial cross-entropy) loss; 0 skips a term
    boundary: float = 1.0  # weight of the dense-CRF boundary loss
    aux: float = 0.4  # weight of the auxiliary score-map loss


@dataclass
class ScheduleCfg:
    checkpoint_interval: int = 100  # iterations between writes of <work_dir>/last.pt
    val_interval: int = 200  # iterations between validations (the best model → best.safetensors)
    log_interval: int = 10  # iterations between log.csv writes (and log lines with --no-progress)
    val_max_images: int | None = 40  # validate on the first N images of data.val_list; null = all


@dataclass
class TrainConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    device: str = "auto"  # auto (CUDA when available), cuda or cpu
    work_dir: str = "runs/synthetic_tiny"  # outputs: config.yaml, last.pt, *.safetensors, log.csv, val.csv

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``config.yaml`` and ``last.pt`` record)."""
        return dataclasses.asdict(self)


_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list of strings"}
_COERCE: dict[Any, Callable[[Any], Any]] = {  # the value a field of this type takes from YAML / TOML / KEY=VALUE
    int: lambda v: int(v) if isinstance(v, float) and v.is_integer() else v,
    float: lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool) else v,
    str: lambda v: v if isinstance(v, (dict, list, bool)) else str(v),  # work_dir=123
    list: lambda v: [v] if isinstance(v, str) else v,
}


def _split(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _type_name(base: Any) -> str:
    origin = typing.get_origin(base) or base
    return _TYPE_NAMES.get(origin, "a mapping" if origin is dict else getattr(origin, "__name__", str(origin)))


def _typed(key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type, or a UsageError naming the key, the value and the type."""
    base, nullable = _split(hint)
    if value is None:
        if nullable:
            return None
        raise UsageError(f"{where}: {key} cannot be null; it takes {_type_name(base)}")
    want = typing.get_origin(base) or base
    value = _COERCE.get(want, lambda v: v)(value)
    ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))  # True is an int, not a number
    if not ok or (want is list and not all(isinstance(v, str) for v in value)):
        raise UsageError(f"{where}: {key} takes {_type_name(base)}, got {value!r} ({type(value).__name__})")
    return value


def _merge(obj: Any, src: dict[str, Any], where: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for k, v in src.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise UsageError(f"{where}: unknown config key {key!r}")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):  # a section: merged key by key
            _merge(current, _typed(key, v, dict, where), where, f"{key}.")
        else:
            setattr(obj, k, _typed(key, v, hints[k], where))


def _parse_value(text: str) -> Any:
    """YAML value, with ``1e-3``-style floats accepted (YAML 1.1 reads them as strings)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


def _override(cfg: TrainConfig, item: str) -> None:
    if "=" not in item:
        raise UsageError(f"override {item!r} is not KEY=VALUE")
    key, text = item.split("=", 1)
    *path, last = key.split(".")
    obj: Any = cfg
    for part in path:
        nxt = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
        if not (dataclasses.is_dataclass(nxt) or isinstance(nxt, dict)):
            raise UsageError(f"unknown config section {part!r} in override {item!r}")
        obj = nxt
    value = _parse_value(text)
    if isinstance(obj, dict):  # model.overrides.<WeakCLIPConfig field>: checked when the model is built
        obj[last] = value
        return
    hints = typing.get_type_hints(type(obj))
    if last not in hints:
        raise UsageError(f"unknown config key {key!r}; known: {sorted(hints)}")
    _merge(obj, {last: value}, f"override {item}", "".join(f"{p}." for p in path))


def packaged_configs() -> dict[str, Any]:
    """name → resource of every config shipped with the package (``training/configs/*.yaml``)."""
    folder = resources.files("weakclip.training") / "configs"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def _read_config_file(path: str) -> tuple[Any, str]:
    p = Path(path)
    if not p.is_file():
        shipped = packaged_configs()
        name = p.name.removesuffix(".yaml")
        if p.parent == Path(".") and name in shipped:  # a bare name: the packaged config
            return yaml.safe_load(shipped[name].read_text(encoding="utf-8")) or {}, f"config {name}"
        raise UsageError(f"{p}: config file not found (packaged configs: {', '.join(sorted(shipped))})")
    try:
        text = p.read_text()
        return (tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text) or {}), str(p)
    except Exception as e:  # noqa: BLE001 - YAML / TOML syntax errors: one line
        raise UsageError(f"{p}: cannot parse the config ({' '.join(str(e).split())})") from None


def read_config(path: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults ← ``path`` (a YAML/TOML file or a shipped name) ← KEY=VALUE ``overrides``."""
    cfg = TrainConfig()
    if path:
        user, where = _read_config_file(path)
        if not isinstance(user, dict):
            raise UsageError(f"{where}: expected a mapping of config sections, got {type(user).__name__}")
        _merge(cfg, user, where)
    for item in overrides:
        _override(cfg, item)
    return cfg


def _comments(cls: type) -> dict[str, str]:
    """field → its comment in the class source (empty when the source is not installed)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found = (re.match(r"\s+(\w+): [^#]*?  # (.*)$", ln) for ln in lines)
    return {m[1]: m[2] for m in found if m}


def _keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    hints, notes, defaults = typing.get_type_hints(cls), _comments(cls), cls()
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            out += _keys(type(value), f"{prefix}{f.name}.")
            continue
        base, nullable = _split(hints[f.name])
        origin = typing.get_origin(base)
        kind = "mapping" if origin is dict else str(base) if origin else base.__name__
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")
        out.append((f"{prefix}{f.name}", kind + (" | null" if nullable else ""), shown, notes.get(f.name, "")))
    return out


def config_help() -> str:
    """The keys of :class:`TrainConfig` as a table: key, type, default, comment."""
    rows = _keys(TrainConfig)
    w0, w1, w2 = (max(len(r[i]) for r in rows) for i in range(3))
    body = "\n".join(f"  {k.ljust(w0)}  {t.ljust(w1)}  {d.ljust(w2)}  {c}".rstrip() for k, t, d, c in rows)
    return f"config keys (KEY=VALUE; a config file holds the same keys in sections; default: {DEFAULT_CONFIG}):\n{body}"
