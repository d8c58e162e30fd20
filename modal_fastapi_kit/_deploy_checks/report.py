"""``check_service``: the deployment a class generates, what it holds in GPU-hours, and the
findings about it, in one ``Report``."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cost import IdleCost, idle_cost
from .finding import SEVERITIES, Finding, Severity
from .imports import import_findings
from .settings import settings_findings
from .source import display_path
from .table import Table, describe

if TYPE_CHECKING:
    from .._modal import ModalDeployment

__all__ = ["Report", "check_service", "findings"]


@dataclass(frozen=True)
class Report:
    """What ``mfk check`` prints: the deployment table, the idle cost and the findings."""

    service: str  # the class's name
    app: str  # the Modal App's name
    deployment: Table
    idle_cost: IdleCost
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings that fail the deploy or its containers: ``mfk deploy`` refuses them."""
        return self.of("error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return self.of("warning")

    @property
    def notes(self) -> tuple[Finding, ...]:
        return self.of("note")

    def of(self, severity: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == severity)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (the ``mfk check --json`` object): a row's ``from_info``
        says whether Modal's ``info()`` reported it."""
        sections = [
            {
                "section": title,
                "rows": [
                    {
                        "setting": key.rstrip("*"),
                        "value": value,
                        "from_info": not key.endswith("*"),
                    }
                    for key, value in rows
                ],
            }
            for title, rows in self.deployment
            if rows
        ]
        return {
            "service": self.service,
            "app": self.app,
            "deployment": sections,
            "idle_cost": self.idle_cost.as_dict(),
            "findings": [finding.as_dict() for finding in self.findings],
            "counts": {severity: len(self.of(severity)) for severity in SEVERITIES},
        }


def check_service(server_cls: type) -> Report:
    """Build the Modal deployment of a ``@gpu_service`` class (no Modal account needed) and
    check it: the generated objects as a table, read back through Modal's ``info()``, the
    GPU-hours its autoscaling holds, and the findings, errors first.

    Raises ``ConfigError`` when the class cannot be deployed at all (Modal rejects it). The
    class's module must be imported the way Modal imports it (from its file): the findings
    read its source, and whether it binds ``app``.
    """
    from .._modal import deployment

    built = deployment(server_cls)
    return Report(
        service=server_cls.__name__,
        app=built.app.name or "",
        deployment=describe(built),
        idle_cost=idle_cost(built.config),
        findings=findings(built),
    )


def findings(built: ModalDeployment) -> tuple[Finding, ...]:
    """Imports the image lacks, then settings that bill or work against each other; errors,
    then warnings, then notes, each in the order found."""
    where = _class_line(built.server_cls)
    found: list[Finding] = []
    module = sys.modules.get(built.server_cls.__module__)
    source = getattr(module, "__file__", None)
    if source is not None:
        config = built.config
        found += [
            finding if finding.where else dataclasses.replace(finding, where=where)
            for finding in import_findings(
                Path(source), built.packages, config.local_sources, built.python_version
            )
        ]
    found += settings_findings(built, where)
    return tuple(sorted(found, key=lambda finding: SEVERITIES.index(finding.severity)))


def _class_line(cls: type) -> tuple[str, ...]:
    """``file:line`` of the decorated class, for findings about its options."""
    try:
        source = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return ()
    return (f"{display_path(Path(source))}:{line}",) if source else ()
