"""A finding: something about a deployment that would break or bill on Modal, as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SEVERITIES", "Finding", "Severity"]

Severity = Literal["error", "warning", "note"]
# error: the deploy or every container of it fails (``mfk deploy`` refuses it);
# warning: it deploys, but bills more than meant or settings work against each other;
# note: worth knowing, nothing to fix unless it was meant otherwise.
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """What was found, with a stable ``code`` to branch on, its ``severity``, the ``message``
    (what is wrong and what follows from it), the ``fix`` and where it comes from
    (``file:line``)."""

    code: str
    severity: Severity
    message: str
    fix: str
    where: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "where": list(self.where),
        }
