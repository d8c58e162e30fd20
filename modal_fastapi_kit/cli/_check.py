"""``mfk check FILE.py[:Class]``: the generated Modal deployment as a table, what an idle
deployment holds in GPU-hours, and what would break or bill on Modal.

What is checked lives in ``modal_fastapi_kit._deploy_checks`` (``check_service``); this module
parses the arguments and prints the report, as text or as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from .._deploy_checks import (
    DAYS_PER_MONTH,
    Finding,
    IdleCost,
    Report,
    Row,
    Table,
    check_service,
    describe,
)
from .._deploy_checks.cost import hours
from ..exceptions import ConfigError
from ._loading import UsageError, load_service

__all__ = ["add_parser", "describe", "print_findings", "render", "report_dict", "run"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="show the Modal deployment generated for a class, and what may bite",
        description="Build the Modal objects for a @gpu_service class (no Modal account "
        "needed), print them as a table with the GPU-hours an idle deployment holds, and say "
        "what would fail on Modal (errors: imports the image lacks), bill more than meant or "
        "work against each other (warnings).",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 on errors or warnings (notes do not count)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (deployment, idle_cost, findings, counts) instead of the table",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # With --json, stdout carries the JSON alone: what the file prints on import goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        server_cls = load_service(args.target)
        try:
            report = check_service(server_cls)
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
    failing = bool(report.errors or report.warnings)
    if args.json:
        print(json.dumps(report_dict(report, args.target), indent=2))
    else:
        print(f"Modal deployment of {report.service} ({args.target})\n")
        print(render(report.deployment))
        print(render([_idle_section(report.idle_cost)]))
        print_findings(report.findings)
        if not failing:
            print("no warnings")
    return 1 if failing and args.strict else 0


def report_dict(report: Report, target: str) -> dict[str, Any]:
    """The ``--json`` object: the report, with the target it was asked for."""
    data = report.as_dict()
    return {"service": data.pop("service"), "target": target, **data}


def print_findings(found: tuple[Finding, ...], file: Any = None) -> None:
    """Each finding as ``severity: message``, then its fix on an indented line."""
    for finding in found:
        print(f"{finding.severity}: {finding.message}", file=file)
        print(f"  fix: {finding.fix}", file=file)


def render(sections: Table) -> str:
    width = max(len(key) for _, rows in sections for key, _ in rows) + 2
    lines: list[str] = []
    for title, rows in sections:
        lines.append(title)
        lines.extend(f"  {key:<{width}}{value}" for key, value in rows)
        lines.append("")
    return "\n".join(lines)


def _idle_section(cost: IdleCost) -> tuple[str, list[Row]]:
    title = f"idle cost (GPU-hours, from the config; no prices; a month is {DAYS_PER_MONTH} days)"
    if not cost.gpus:
        return title, [("gpu", "none: CPU containers only, no GPU-hours")]
    per = cost.gpus_per_container
    largest = " (the largest choice)" if len(cost.gpus) > 1 else ""
    idle = (
        f"{cost.min_containers} container(s) x {per} = {cost.idle_gpus} GPU(s): "
        f"{hours(cost.idle_gpu_hours_per_day)} GPU-h a day, "
        f"{hours(cost.idle_gpu_hours_per_month)} GPU-h a month (min_containers)"
        if cost.min_containers
        else "nothing (min_containers=0; a request after a quiet spell waits for a cold start)"
    )
    serving = (
        f"+{cost.buffer_gpus_while_active} idle GPU(s) above demand "
        f"(buffer_containers={cost.buffer_containers})"
        if cost.buffer_containers
        else "no idle containers above demand (buffer_containers unset)"
    )
    tail = (
        f"{hours(cost.burst_tail_gpu_hours_per_container)} GPU-h per container above "
        f"min_containers ({cost.scaledown_window}s scaledown_window x {per} GPU(s)); "
    )
    at_max = cost.burst_tail_gpu_hours_at_max
    if at_max is None:
        tail += "no max_containers, so no bound"
    else:
        tail += f"{hours(at_max)} GPU-h after scaling to max_containers={cost.max_containers}"
    return title, [
        ("gpus per container", f"{per}{largest}: {', '.join(cost.gpus)}"),
        ("held while idle", idle),
        ("while serving", serving),
        ("after a burst", tail),
    ]
