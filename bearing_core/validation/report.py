"""The validation report: what was checked, what failed (with examples), what was quarantined, where the docs are.

:class:`ValidationReport` is plain data (pydantic, JSON-serialisable), so it can be cached by the Prefect task,
written next to the Data Docs as ``report.json``/``report.md`` and rendered as a console summary, a markdown
artifact or a table artifact. :meth:`ValidationReport.raise_for_errors` turns blocking failures into a
:class:`ValidationFailed` that carries the report.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bearing_core import markdown as md
from bearing_core.validation.suites import Severity

Status = Literal["PASS", "WARN", "FAIL"]
_TABLE_DETAIL = 40  # characters of a check's details in the table artifact (the markdown artifact has them all)
_LISTED = 20  # flagged rows of a warning printed in the console summary (all are in report.json)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectationOutcome(_Model):
    """The result of one check (one GX expectation)."""

    check: str = Field(..., description="Stable check name, e.g. samples.max_in_range")
    family: str = Field(..., description="Checks repeated per column share a family (grouped in summaries)")
    suite: str = Field(..., description="GX expectation suite the check belongs to")
    expectation_type: str = Field(..., description="GX expectation type, e.g. expect_column_values_to_be_between")
    description: str = Field("", description="What the check requires, with its thresholds")
    severity: Severity
    quarantine: bool = Field(False, description="Failing snapshots are quarantined instead of stopping the run")
    success: bool
    column: str | None = None
    unexpected_count: int = Field(0, description="Rows that failed (0 for table-level checks)")
    element_count: int | None = Field(None, description="Rows checked")
    observed: str | None = Field(None, description="Observed value of table-level checks")
    examples: list[str] = Field(default_factory=list, description="A few failing rows: key and value")
    failing_keys: list[str] = Field(
        default_factory=list,
        description="Key of every failing row (snapshot path, or client for partitions): e.g. all shut-down snapshots",
    )
    error: str | None = Field(None, description="Why the check could not be evaluated (e.g. missing column)")

    @property
    def status(self) -> Status:
        if self.success:
            return "PASS"
        return "FAIL" if self.severity == "error" else "WARN"

    @property
    def blocking(self) -> bool:
        """A failed error check that does not quarantine: it stops the pipeline."""
        return not self.success and self.severity == "error" and not self.quarantine

    def detail(self) -> str:
        """One line saying what went wrong (empty when the check passed)."""
        if self.success:
            return ""
        parts = []
        if self.error:
            parts.append(f"could not be evaluated: {self.error}")
        if self.unexpected_count:
            total = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"{self.unexpected_count}{total} rows fail")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.quarantine:
            parts.append("snapshots quarantined")
        if self.examples:
            parts.append(f"e.g. {' | '.join(self.examples)}")
        return "; ".join(parts)


class QuarantineEntry(_Model):
    """A snapshot excluded by validation (stage "validate" of quarantine.parquet)."""

    file: str = Field(..., description="Snapshot path relative to the raw directory (the features' path)")
    reason: str = Field(..., description="Check name, column and observed value of each failure")


class ValidationReport(_Model):
    """Outcome of a validation run over a processed dataset or a client partitioning."""

    target: Path = Field(..., description="The dataset (or partition) directory validated")
    kind: Literal["dataset", "partitions"] = "dataset"
    n_rows: int = Field(..., description="Snapshots (dataset) or partitioned paths (partitions) checked")
    n_valid: int = Field(..., description="Snapshots left after quarantine (dataset) or rows in clients")
    outcomes: list[ExpectationOutcome]
    quarantined: list[QuarantineEntry] = Field(default_factory=list)
    docs_index: Path | None = Field(None, description="Data Docs index.html (None when docs were not built)")

    @property
    def errors(self) -> list[ExpectationOutcome]:
        """Blocking failures: failed error checks that do not quarantine."""
        return [o for o in self.outcomes if o.blocking]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.status == "WARN"]

    @property
    def success(self) -> bool:
        """True when nothing blocks the pipeline (warnings and quarantined snapshots allowed)."""
        return not self.errors

    def outcome(self, check: str) -> ExpectationOutcome:
        """The outcome of the check named ``check`` (KeyError if no such check ran)."""
        for o in self.outcomes:
            if o.check == check:
                return o
        raise KeyError(f"no check named {check!r} in this report")

    def headline(self) -> str:
        verdict = "FAILED" if self.errors else ("PASSED with warnings" if self.warnings else "PASSED")
        n_pass = sum(o.success for o in self.outcomes)
        return (
            f"Validation {verdict}: {self.target} ({self.kind}) - {len(self.outcomes)} checks, {n_pass} passed, "
            f"{len(self.warnings)} warnings, {len(self.errors)} blocking errors; {self.n_valid}/{self.n_rows} "
            f"{'snapshots valid' if self.kind == 'dataset' else 'rows in clients'}, "
            f"{len(self.quarantined)} quarantined"
        )

    def _grouped(self) -> list[tuple[Status, str, str, list[ExpectationOutcome]]]:
        """Passed checks grouped by family (one line per family); failed and warned checks one per line."""
        lines: list[tuple[Status, str, str, list[ExpectationOutcome]]] = []
        passed: dict[str, list[ExpectationOutcome]] = defaultdict(list)
        for o in self.outcomes:
            if o.success:
                passed[o.family].append(o)
            else:
                lines.append((o.status, o.check, o.severity + (" -> quarantine" if o.quarantine else ""), [o]))
        for family, group in passed.items():
            label = family if len(group) == 1 else f"{family} ({len(group)} columns)"
            lines.append(("PASS", label, group[0].severity, group))
        order = {"FAIL": 0, "WARN": 1, "PASS": 2}
        return sorted(lines, key=lambda line: order[line[0]])

    def summary_text(self, passed: bool = True) -> str:
        """Console summary: headline, one line per check (passed ones grouped, left out when ``passed`` is False),
        details of failures."""
        out = [self.headline()]
        for status, label, severity, group in self._grouped():
            if status == "PASS" and not passed:
                continue
            out.append(f"  {status:4}  {label}  [{severity}]")
            if status != "PASS":
                out.append(f"        {group[0].detail()}")
            if status == "WARN" and group[0].failing_keys:
                keys = group[0].failing_keys
                more = f" ... (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
                out.append(f"        flagged: {', '.join(keys[:_LISTED])}{more}")
        if self.quarantined:
            out.append(f"Quarantined ({len(self.quarantined)}):")
            out += [f"  {q.file}: {q.reason}" for q in self.quarantined]
        if self.docs_index:
            out.append(f"Data Docs: {self.docs_index}")
        return "\n".join(out)

    def to_markdown(self) -> str:
        """Markdown report (Prefect artifact, report.md): headline, one line per check (passed ones grouped),
        quarantine list (text escaped)."""
        # a list, not a table: the details are long sentences, which a table cuts off at the UI's width
        out = [f"# {md.text(self.headline())}", ""]
        for status, label, severity, group in self._grouped():
            detail = group[0].detail() if status != "PASS" else group[0].description
            out.append(f"- **{status}** {md.code(label)} ({md.text(severity)}): {md.cell(detail)}")
        if self.quarantined:
            out += ["", f"## Quarantined snapshots ({len(self.quarantined)})", ""]
            out += [f"- {md.code(q.file)}: {md.cell(q.reason)}" for q in self.quarantined]
        if self.docs_index:
            out += ["", f"Data Docs: [{md.text(self.docs_index)}]({self.docs_index.as_uri()})"]
        return "\n".join(out) + "\n"

    def table_rows(self) -> list[dict[str, object]]:
        """One dict per check (Prefect table artifact, DataFrame): five columns and details cut to a few words, so
        the table fits the UI's width (the column is part of the check's name; the full details are in the
        markdown artifact and report.json)."""
        return [
            {
                "check": o.check,
                "status": o.status,
                "severity": o.severity + (", quarantines" if o.quarantine else ""),
                "failing rows": "" if o.element_count is None else f"{o.unexpected_count} of {o.element_count}",
                "details": _clip(o.detail(), _TABLE_DETAIL),
            }
            for o in self.outcomes
        ]

    def raise_for_errors(self) -> None:
        """Raise :class:`ValidationFailed` when a blocking (error, non-quarantining) check failed."""
        if self.errors:
            raise ValidationFailed(self)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class ValidationFailed(Exception):
    """An error-severity expectation failed: the pipeline must stop before training. Carries the report."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        lines = [f"validation of {report.target} failed: {len(report.errors)} error expectation(s) failed"]
        for o in report.errors:
            column = f" (column {o.column})" if o.column else ""
            lines.append(f"  - {o.check}{column}: {o.detail()}")
        if report.docs_index:
            lines.append(f"Data Docs: {report.docs_index}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[ValidationFailed], tuple[ValidationReport]]:
        # picklable (Prefect persists task/flow exceptions): rebuild from the report, not from the message
        return (ValidationFailed, (self.report,))
