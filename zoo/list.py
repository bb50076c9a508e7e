"""`python -m zoo.list [--json] [--traceback]`: the installed families and datamodules and their status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from zoo import registry


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.list", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--traceback", action="store_true", help="print the full traceback of broken plugins")
    args = parser.parse_args(argv)

    models = registry.describe(registry.model_entries())
    datamodules = registry.describe(registry.datamodule_entries())
    if args.json:
        print(
            json.dumps(
                {"models": [s.as_dict() for s in models], "datamodules": [s.as_dict() for s in datamodules]},
                indent=2,
            )
        )
        return 0

    def status(s: registry.Status) -> str:
        return "ok" if s.ok else f"broken: {s.error}"

    header = ["NAME", "MODALITY", "DEFAULT DATA", "DISTRIBUTION", "STATUS"]
    print("Models")
    print(
        _table(
            [
                [s.name, s.modality or "-", s.default_data or "-", f"{s.distribution} {s.version}", status(s)]
                for s in models
            ],
            header,
        )
    )
    print("\nDatamodules")
    header = ["NAME", "MODALITY", "DISTRIBUTION", "STATUS"]
    print(
        _table(
            [[s.name, s.modality or "-", f"{s.distribution} {s.version}", status(s)] for s in datamodules],
            header,
        )
    )
    broken = [s for s in models + datamodules if not s.ok]
    if broken:
        print(
            f"\n{len(broken)} broken plugin(s); the rest work. `python -m zoo.list --traceback` shows why.",
            file=sys.stderr,
        )
        if args.traceback:
            for s in broken:
                print(
                    f"\n--- {s.kind} '{s.name}' from {s.distribution} ---\n{s.traceback or s.error}",
                    file=sys.stderr,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
