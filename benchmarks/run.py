"""`make bench`: run every ``benchmarks/bench_*.py`` and print their markdown sections.

Each module exposes ``run() -> str``. Results are printed, and written to
``benchmarks/results.md`` (git-ignored) so they can be copied into ``docs/benchmarks.md``
with the machine they were measured on.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    only = set(argv)
    sections = [
        f"# tumorseg benchmarks\n\nmachine: {platform.machine()}, "
        f"{platform.processor() or 'cpu'}, python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n"
    ]
    for path in sorted(HERE.glob("bench_*.py")):
        if only and path.stem not in only and path.stem.removeprefix("bench_") not in only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        print(f"== {path.stem}", flush=True)
        section = module.run()
        print(section, flush=True)
        sections.append(section)
    (HERE / "results.md").write_text("\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
