"""What ``mfk check`` and ``mfk deploy`` know about a deployment before it reaches Modal, for a
program to use (a CI step, a deploy script): ``check_service(Cls)`` returns a ``Report``.

    from modal_fastapi_kit.checks import check_service

    report = check_service(Embedder)
    for finding in report.errors:  # what fails the deploy or its containers
        print(finding.code, finding.where, finding.message, finding.fix)
    print(report.idle_cost.idle_gpu_hours_per_month)

Nothing here needs a Modal account: the deployment is built offline and read back through
Modal's own ``info()``.
"""

from ._deploy_checks import SEVERITIES, Finding, IdleCost, Report, Severity, check_service

__all__ = ["SEVERITIES", "Finding", "IdleCost", "Report", "Severity", "check_service"]
