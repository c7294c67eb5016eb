"""Data validation with Great Expectations 1.x: samples, features table and federated partitions.

Modules: ``config`` (ValidationConfig thresholds), ``summaries`` (vectorised per-snapshot tables the
expectations run on), ``suites`` (the expectation suites in code, each check with a severity), ``runner``
(ephemeral GX context, checkpoints, Data Docs, quarantine), ``report`` (ValidationReport, ValidationFailed).

Importing this package does not import Great Expectations; only running a validation does.
"""

from bearing_core.validation.config import ValidationConfig
from bearing_core.validation.report import ExpectationOutcome, QuarantineEntry, ValidationFailed, ValidationReport
from bearing_core.validation.runner import validate_dataset, validate_partitions

__all__ = [
    "ExpectationOutcome",
    "QuarantineEntry",
    "ValidationConfig",
    "ValidationFailed",
    "ValidationReport",
    "validate_dataset",
    "validate_partitions",
]
