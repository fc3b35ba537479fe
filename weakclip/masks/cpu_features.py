"""Which CPU instruction sets this machine has, and so which precision tiers run natively on it
(``python -m weakclip.cli.cpu_features`` prints both).

Source: the ``flags`` (aarch64: ``Features``) line of ``/proc/cpuinfo``; where it cannot be read, torch's cpuinfo
queries.  Tiers: ``fp32`` needs nothing; ``bf16`` needs avx512_bf16 / amx_bf16 (aarch64 bf16): emulated bf16 is
slower than fp32, so a bf16 engine is refused without them; ``int8_vnni`` (VNNI / AMX-INT8) is only faster: int8
runs everywhere (MLAS has an AVX2 kernel), so that tier is never refused, only reported.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# The instruction sets the tiers depend on, in the order they are reported: x86 AVX, AVX512-FP16 and AMX, then
# aarch64 bf16 (FEAT_BF16), i8mm (int8 matrix multiply) and asimddp (dot product).
_AVX = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16")
_AMX = ("avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
ISAS: tuple[str, ...] = (*_AVX, *_AMX, "bf16", "i8mm", "asimddp")

# tier → instruction sets any one of which makes the tier native (x86 first, then aarch64).
TIER_ISAS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),
    "int8_vnni": ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp"),
}
# How a tier's requirement is said in messages (x86 names: the CPUs CI and users have).
TIER_NEEDS_TEXT: dict[str, str] = {"bf16": "avx512_bf16 or amx_bf16", "int8_vnni": "avx512_vnni, avx_vnni or amx_int8"}


@dataclass(frozen=True)
class CPUFeatures:
    model: str  # "AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C", ...
    vendor: str  # "AuthenticAMD", "GenuineIntel", "" when unknown
    flags: frozenset[str]  # every flag the source listed (not only ISAS)
    source: str  # "/proc/cpuinfo", "torch.cpu" or "none"
    arch: str = platform.machine()

    def has(self, isa: str) -> bool:
        return isa in self.flags

    @property
    def isas(self) -> list[str]:
        """The instruction sets of :data:`ISAS` this CPU has, in that order."""
        return [i for i in ISAS if i in self.flags]

    @property
    def bf16(self) -> bool:
        """Native bf16 matrix arithmetic (avx512_bf16 / amx_bf16; aarch64 bf16)."""
        return any(i in self.flags for i in TIER_ISAS["bf16"])

    @property
    def int8_isa(self) -> str:
        """The best int8 dot-product instruction set: amx_int8, avx512_vnni, avx_vnni, avx512bw, avx2 (no VNNI:
        int8 products through vpmaddubsw + vpmaddwd), or 'none'."""
        best = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp", "avx512bw", "avx2")
        return next((i for i in best if i in self.flags), "none")

    def summary(self) -> str:
        """One line: model and the relevant instruction sets, e.g. ``AMD EPYC (avx2 fma f16c)``."""
        return f"{self.model or 'unknown CPU'} ({' '.join(self.isas) or 'none of ' + ', '.join(_AVX)})"

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("model", "vendor", "arch", "isas", "bf16", "int8_isa", "source")}


def parse_cpuinfo(text: str) -> tuple[str, str, frozenset[str]]:
    """(model, vendor, flags) from /proc/cpuinfo text (first processor; x86 ``flags`` or aarch64 ``Features``)."""
    model = vendor = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "cpu implementer" and not vendor:  # aarch64
            vendor = f"arm implementer {value}"
    return model, vendor, flags


# torch.cpu query → the flags it implies (every CPU with AMX tiles so far has AMX-BF16 and AMX-INT8)
_TORCH_QUERIES = {
    "_is_avx2_supported": ("avx2", "fma"),
    "_is_avx512_supported": ("avx512f", "avx512bw", "avx512vl"),  # torch: avx512f + bw + vl + dq
    "_is_vnni_supported": ("avx512_vnni",),
    "_is_avx512_bf16_supported": ("avx512_bf16",),
    "_is_amx_tile_supported": ("amx_tile", "amx_bf16", "amx_int8"),
    "_is_amx_fp16_supported": ("amx_fp16",),
}


def _from_torch() -> frozenset[str]:
    """Flags from torch's cpuinfo queries (fallback when /proc/cpuinfo is unreadable)."""
    try:
        import torch
    except ImportError:
        return frozenset()
    cpu = getattr(torch, "cpu", None)

    def q(name: str) -> bool:
        try:
            return bool(getattr(cpu, name)())
        except Exception:  # noqa: BLE001 - absent, or a private query that may change between torch versions
            return False

    return frozenset(isa for query, isas in _TORCH_QUERIES.items() if q(query) for isa in isas)


@functools.lru_cache(maxsize=1)
def detect(cpuinfo: str = "/proc/cpuinfo") -> CPUFeatures:
    """This machine's :class:`CPUFeatures` (cached)."""
    try:
        model, vendor, flags = parse_cpuinfo(Path(cpuinfo).read_text(errors="replace"))
        if flags:
            return CPUFeatures(model or platform.processor(), vendor, flags, "/proc/cpuinfo")
    except OSError:
        model = vendor = ""
    flags = _from_torch()
    return CPUFeatures(model or platform.processor(), vendor, flags, "torch.cpu" if flags else "none")


def missing_for(tier: str, features: CPUFeatures | None = None) -> str | None:
    """None when ``tier`` ('fp32', 'bf16', 'int8_vnni') runs natively here, else one line naming what is missing,
    e.g. ``bf16 needs avx512_bf16 or amx_bf16, which this CPU (AMD EPYC: avx2 fma f16c) lacks``."""
    if tier not in TIER_ISAS:
        raise ValueError(f"unknown precision tier {tier!r}; one of {tuple(TIER_ISAS)}")
    f = features or detect()
    need = TIER_ISAS[tier]
    if not need or any(f.has(i) for i in need):
        return None
    return (
        f"{tier} needs {TIER_NEEDS_TEXT[tier]}, which this CPU ({f.model or 'unknown model'}: "
        f"{' '.join(f.isas) or 'none of the listed instruction sets'}) lacks"
    )
