"""Flow: validate a processed dataset with Great Expectations (same as `bearing validate`).

Publishes the summary as a markdown artifact and the per-check results as a table artifact, then fails the flow
run (ValidationFailed) when an error expectation failed, so nothing downstream (partitioning, training) runs on
bad data. Warnings and quarantined snapshots do not fail the run.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bearing_core.run_report import relative
from bearing_core.validation import ValidationConfig, ValidationReport
from tasks.validate import validate_task, validation_inputs_fingerprint


def portable(report: ValidationReport) -> ValidationReport:
    """The report with paths relative to the working directory, for artifacts and run reports (no machine paths)."""
    return report.model_copy(update={"target": Path(relative(report.target)), "docs_index": None})


def artifact_markdown(report: ValidationReport) -> str:
    """Markdown artifact of ``report``: :meth:`ValidationReport.to_markdown` with relative paths."""
    markdown = portable(report).to_markdown()
    if report.docs_index:
        markdown += f"\nData Docs: `{relative(report.docs_index)}`\n"
    return markdown


def artifact_key(dataset_dir: str | Path) -> str:
    """Prefect artifact key for a dataset (lowercase letters, digits and dashes): validation-<dataset name>."""
    name = re.sub(r"[^a-z0-9]+", "-", Path(dataset_dir).resolve().name.lower()).strip("-")
    return f"validation-{name or 'dataset'}"


@flow(name="validate", log_prints=True)
def validate_flow(dataset_dir: str, config: ValidationConfig | None = None) -> ValidationReport:
    """Validate ``dataset_dir`` (samples, features, timeline), quarantine bad snapshots, build the Data Docs.

    Args:
        dataset_dir: processed dataset directory (output of the ingest flow).
        config: validation thresholds; default ValidationConfig().

    Returns the ValidationReport; raises ValidationFailed (failing the run) on a blocking error.
    """
    cfg = config or ValidationConfig()
    dataset = Path(dataset_dir).resolve()
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {dataset}")
    docs_missing = not (dataset / "validation" / "report.json").is_file()
    state = validate_task.with_options(refresh_cache=docs_missing or None)(
        dataset_dir=str(dataset),
        settings=cfg.model_dump(mode="json"),
        inputs_fingerprint=validation_inputs_fingerprint(dataset),
        return_state=True,
    )
    report = ValidationReport.model_validate(state.result())
    key = artifact_key(dataset)
    create_markdown_artifact(markdown=artifact_markdown(report), key=key, description=portable(report).headline())
    create_table_artifact(table=report.table_rows(), key=f"{key}-checks", description="One row per expectation")
    # the headline and what failed (every check is in the artifacts); relative paths: the server stores logs
    headline, *failures = portable(report).summary_text(passed=False).split("\n")
    cached = " (cached: the dataset is unchanged since it was validated)" if state.name == "Cached" else ""
    docs = [f"Data Docs: {relative(report.docs_index)}"] if report.docs_index else []
    print("\n".join([headline + cached, *failures, *docs]))
    report.raise_for_errors()
    return report
