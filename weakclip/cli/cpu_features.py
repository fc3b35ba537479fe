"""python -m weakclip.cli.cpu_features: the CPU's instruction sets and the precision tiers it runs natively."""

from __future__ import annotations

from weakclip.masks.cpu_features import TIER_ISAS, detect, missing_for


def main() -> None:
    f = detect()
    print(f.summary())
    for tier in TIER_ISAS:
        print(f"{tier:10s} {missing_for(tier, f) or 'native'}")


if __name__ == "__main__":
    main()
