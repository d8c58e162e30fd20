"""What ``mfk check`` and ``mfk deploy`` know about a deployment before it reaches Modal, as
data a program can use: ``check_service(Cls)`` returns a ``Report``.

    report = check_service(Embedder)
    for finding in report.errors:  # what fails the deploy or its containers
        print(finding.code, finding.where, finding.message, finding.fix)
    print(report.idle_cost.idle_gpu_hours_per_month)

The rooms:

- ``report``: ``check_service``, ``Report``, and the order of the findings.
- ``finding``: ``Finding`` (code, severity, message, fix, where) and the severities.
- ``table``: the generated deployment as rows, read back through Modal's ``info()``.
- ``cost``: the GPU-hours the autoscaling settings hold (``IdleCost``).
- ``settings``: settings that break, bill or work against each other.
- ``imports``: imports the image cannot satisfy, found by comparing
  ``source`` (what the service's code imports, read with ``ast``) with
  ``distributions`` (what the image installs, and which distribution provides an import).

Requirements and their markers are evaluated for the image in ``modal_fastapi_kit._requirements``,
which the image build shares.
"""

from .cost import DAYS_PER_MONTH, HOURS_PER_DAY, IdleCost, gpu_count, idle_cost
from .distributions import KNOWN_DISTRIBUTIONS, ImagePackages, image_packages
from .finding import SEVERITIES, Finding, Severity
from .imports import import_findings
from .report import Report, check_service, findings
from .table import Row, Table, describe

__all__ = [
    "DAYS_PER_MONTH",
    "HOURS_PER_DAY",
    "KNOWN_DISTRIBUTIONS",
    "SEVERITIES",
    "Finding",
    "IdleCost",
    "ImagePackages",
    "Report",
    "Row",
    "Severity",
    "Table",
    "check_service",
    "describe",
    "findings",
    "gpu_count",
    "idle_cost",
    "image_packages",
    "import_findings",
]
