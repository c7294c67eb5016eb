"""Run the expectation suites with Great Expectations 1.x and publish the results.

One ephemeral GX context per run (nothing persisted but what we write): a pandas data source whose assets are
the Parquet tables being validated, one expectation suite and one validation definition per table, a
checkpoint per phase with an ``UpdateDataDocsAction`` that renders a local Data Docs site, readable offline
(:mod:`~bearing_core.validation.data_docs`).

Dataset validation runs in two phases because the second depends on the first:

1. **samples** checkpoint, on the per-snapshot summaries (see :mod:`~bearing_core.validation.summaries`; each
   snapshot's samples are read once, then its summary comes from :mod:`~bearing_core.validation.summary_cache`):
   failing snapshots are quarantined (``quarantine.parquet`` is rewritten atomically: ingest's rows kept,
   stage ``"validate"`` rows replaced).
2. **features** checkpoint, on the features table *without* quarantined rows, and on its per-site timeline.

Outputs, all under ``DATASET_DIR/validation/``: the Data Docs (``index.html``), ``report.json``,
``report.md`` and ``tables/`` (the exact tables validated, for audit). The directory is built beside the
target (``.validation.build-*``) and swapped in with two renames, so readers see the previous complete report
or the new one (``validation/`` is briefly absent between the renames; never half-written).

Great Expectations is imported inside the functions only (it costs ~3 s and 300 MB).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT
from bearing_core.io import write_json_atomic, write_parquet_atomic, write_text_atomic
from bearing_core.validation import suites
from bearing_core.validation.config import ValidationConfig
from bearing_core.validation.report import (
    ExpectationOutcome,
    QuarantineEntry,
    ValidationReport,
)
from bearing_core.validation.summaries import feature_timeline, partition_tables
from bearing_core.validation.summary_cache import cached_summaries

log = logging.getLogger(__name__)

DOCS_SITE = "bearing_validation"
QUARANTINE_SCHEMA = pa.schema([("file", pa.string()), ("reason", pa.string()), ("stage", pa.string())])
VALIDATE_STAGE = "validate"


@dataclass(frozen=True)
class _Table:
    """A table to validate: its name (GX asset and suite), data, checks and the columns naming a row."""

    name: str
    frame: pd.DataFrame | pa.Table
    checks: list[suites.Check]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class _Result:
    """A check's outcome plus the frame positions of its failing rows (for quarantine)."""

    outcome: ExpectationOutcome
    table: _Table
    frame: pd.DataFrame
    failing_rows: list[int]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


class DataDocsError(RuntimeError):
    """Great Expectations could not render or write a Data Docs page (it logs such errors and carries on)."""


class _ErrorRecords(logging.Handler):
    """Collects the ERROR records logged while attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _raise_swallowed_docs_errors() -> Iterator[None]:
    """Raise :class:`DataDocsError` after the block if Great Expectations logged an error in it.

    GX's site builder catches any exception raised while rendering or writing a page (a full disk, a template
    error), logs it and goes on: without this, a report directory missing pages would be swapped in as complete.
    The message keeps GX's ``Type: "message"`` of the cause (which names the file) without its traceback.
    """
    handler = _ErrorRecords()
    gx_logger = logging.getLogger("great_expectations")
    gx_logger.addHandler(handler)
    try:
        yield
    finally:
        gx_logger.removeHandler(handler)
    if handler.messages:
        cause = handler.messages[0].split("Detailed information follows:")[-1].split(".  Traceback:")[0].strip()
        raise DataDocsError(f"Data Docs could not be written: {cause}")


class _GXRun:
    """An ephemeral GX context whose Data Docs site (if any) is ``docs_dir`` and whose tables live in ``work_dir``."""

    def __init__(self, work_dir: Path, docs_dir: Path | None, max_examples: int) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        from bearing_core.validation.data_docs import site_config

        sites = {DOCS_SITE: site_config(docs_dir)} if docs_dir is not None else {}
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites=sites,
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.source = self.context.data_sources.add_pandas("bearing")
        self.work_dir = work_dir
        self.docs = docs_dir is not None
        self.max_examples = max_examples

    def run(self, checkpoint_name: str, tables: Sequence[_Table]) -> list[_Result]:
        """Validate ``tables`` in one checkpoint (rendering Data Docs) and return one result per check."""
        gx = self._gx
        definitions = []
        frames: dict[str, pd.DataFrame] = {}
        for t in tables:
            path = self.work_dir / f"{t.name}.parquet"
            write_parquet_atomic(path, t.frame)
            frames[t.name] = pd.read_parquet(path)  # exactly what GX reads, for the examples
            batch = self.source.add_parquet_asset(t.name, path=path).add_batch_definition(f"{t.name}_all")
            # all expectations at construction: add_expectation() re-serialises the whole suite on every call
            suite = self.context.suites.add(
                gx.ExpectationSuite(name=t.name, expectations=[c.expectation for c in t.checks])
            )
            definitions.append(
                self.context.validation_definitions.add(gx.ValidationDefinition(name=t.name, data=batch, suite=suite))
            )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if self.docs else []
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=checkpoint_name,
                validation_definitions=definitions,
                actions=actions,
                result_format={"result_format": "COMPLETE"},
            )
        )
        with _raise_swallowed_docs_errors():
            run = checkpoint.run()
        by_suite = {r.suite_name: r for r in run.run_results.values()}
        results = []
        for t in tables:
            suite_result = by_suite[t.name]
            by_check = {r.expectation_config.meta["check"]: r for r in suite_result.results}
            for check in t.checks:
                results.append(self._result(t, frames[t.name], check, by_check[check.name]))
        return results

    def _result(self, table: _Table, frame: pd.DataFrame, check: suites.Check, r: Any) -> _Result:
        """Turn a GX ExpectationValidationResult into an outcome with readable examples."""
        res = r.result or {}
        exc = r.exception_info or {}
        columns = [check.column] if check.column else list(getattr(check.expectation, "column_list", None) or [])
        missing = [c for c in columns if c not in frame.columns]
        error = None
        if missing:
            error = f"column(s) {', '.join(missing)} missing"
        elif exc.get("raised_exception"):
            error = str(exc.get("exception_message"))
        failing = [int(i) for i in res.get("unexpected_index_list") or []]  # positions: parquet assets get a RangeIndex
        examples = []
        for i in failing[: self.max_examples]:
            label = " ".join(str(frame[c].iat[i]) for c in table.labels if c in frame.columns and c not in columns)
            values = ", ".join(f"{c}={_format_value(frame[c].iat[i])}" for c in columns)
            examples.append(f"{label}: {values}" if label else values)
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        for kind in ("missing", "unexpected"):
            if mismatched.get(kind):
                examples.append(f"{kind} columns: {', '.join(map(str, mismatched[kind]))}")
        observed = res.get("observed_value")
        outcome = ExpectationOutcome(
            check=check.name,
            family=check.family,
            suite=table.name,
            expectation_type=r.expectation_config.type,
            description=check.description,
            severity=check.severity,
            quarantine=check.quarantine,
            success=bool(r.success),
            column=check.column or (",".join(columns) if columns else None),
            unexpected_count=int(res.get("unexpected_count") or 0),
            element_count=res.get("element_count"),
            observed=None if observed is None or mismatched else _format_value(observed),
            examples=examples,
            failing_keys=list(dict.fromkeys(str(frame[table.labels[0]].iat[i]) for i in failing))
            if table.labels[0] in frame.columns
            else [],
            error=error,
        )
        return _Result(outcome, table, frame, failing if not r.success else [])


def _dataset_layout(dataset_dir: Path, cfg: ValidationConfig) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """Channels, feature names and samples per snapshot: config first, then dataset.json, then IMS defaults."""
    meta_path = dataset_dir / "dataset.json"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    channels = cfg.channels or tuple(meta.get("channels") or ())
    if not channels:
        raise ValueError(f"{meta_path} is missing or has no 'channels': pass the expected channels in ValidationConfig")
    if meta.get("features"):
        features = tuple(meta["features"])
    else:
        from bearing_core.features import FEATURES

        features = FEATURES
    expected_samples = cfg.expected_samples or int(meta.get("expected_samples") or IMS_SAMPLES_PER_SNAPSHOT)
    return tuple(channels), features, expected_samples


def _read_quarantine(path: Path) -> pa.Table:
    if not path.is_file():
        return QUARANTINE_SCHEMA.empty_table()
    table = pq.read_table(path)
    missing = [c for c in QUARANTINE_SCHEMA.names if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {QUARANTINE_SCHEMA.names}")
    return table.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)


def write_quarantine(dataset_dir: Path, entries: Sequence[QuarantineEntry]) -> Path:
    """Rewrite ``quarantine.parquet`` atomically: other stages' rows kept, stage "validate" rows replaced."""
    path = dataset_dir / "quarantine.parquet"
    current = _read_quarantine(path)
    kept = current.filter(pc.invert(pc.equal(current["stage"], VALIDATE_STAGE)))
    ours = pa.Table.from_pylist(
        [{"file": e.file, "reason": e.reason, "stage": VALIDATE_STAGE} for e in entries], schema=QUARANTINE_SCHEMA
    )
    return write_parquet_atomic(path, pa.concat_tables([kept, ours]))


def _quarantine_entries(results: Iterable[_Result]) -> list[QuarantineEntry]:
    """One entry per snapshot failing quarantining checks; its reason lists every failure (check, column, value)."""
    reasons: dict[str, list[str]] = {}
    for res in results:
        if not res.failing_rows or not res.outcome.quarantine:
            continue
        column = res.outcome.column
        for i in res.failing_rows:
            path = str(res.frame["path"].iat[i])
            channel = f"channel {res.frame['channel'].iat[i]} " if "channel" in res.frame.columns else ""
            value = _format_value(res.frame[column].iat[i]) if column in res.frame.columns else "?"
            reasons.setdefault(path, []).append(f"{res.outcome.check}: {channel}{column}={value}")
    return [QuarantineEntry(file=p, reason="; ".join(r)) for p, r in sorted(reasons.items())]


@contextlib.contextmanager
def _report_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh build directory beside ``target``; on success swap it in place of ``target``.

    Two renames (old report aside, new one in) then the old one is deleted: readers never see a half-built site.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(build, target)
    shutil.rmtree(old, ignore_errors=True)


def _finish(report: ValidationReport, build: Path) -> None:
    write_json_atomic(build / "report.json", report.model_dump(mode="json"))
    write_text_atomic(build / "report.md", report.to_markdown())


def validate_dataset(dataset_dir: str | os.PathLike[str], cfg: ValidationConfig | None = None) -> ValidationReport:
    """Validate a processed dataset (samples, features table), quarantine bad snapshots, build Data Docs.

    Returns the report; call :meth:`ValidationReport.raise_for_errors` to stop on blocking failures. Snapshots
    failing a sample-level check are quarantined (stage "validate") and excluded from the features checks;
    such failures do not block unless more than ``cfg.max_quarantine_fraction`` of the snapshots are lost.
    """
    cfg = cfg or ValidationConfig()
    dataset_dir = Path(dataset_dir).resolve()
    features_path = dataset_dir / "features.parquet"
    if not features_path.is_file():
        raise FileNotFoundError(f"{features_path} not found: is {dataset_dir} a processed dataset (bearing ingest)?")
    channels, features, expected_samples = _dataset_layout(dataset_dir, cfg)
    table = pq.read_table(features_path)
    ingest_rows = _read_quarantine(dataset_dir / "quarantine.parquet")
    ingest_rows = ingest_rows.filter(pc.invert(pc.equal(ingest_rows["stage"], VALIDATE_STAGE)))
    paths: list[str] = []
    sites: list[str] = []
    if "path" in table.column_names:  # without it no snapshot can be located: features.columns reports it
        table = table.filter(pc.invert(pc.is_in(table["path"].cast(pa.string()), value_set=ingest_rows["file"])))
        paths = [str(p) for p in table.column("path").to_pylist()]
        has_site = "site" in table.column_names
        sites = [str(s) for s in table.column("site").to_pylist()] if has_site else [""] * len(paths)
    n_total = table.num_rows

    with _report_dir(dataset_dir / "validation") as build:
        work = build / "tables"
        work.mkdir()
        gx_run = _GXRun(work, build if cfg.build_docs else None, cfg.max_examples)
        summaries = cached_summaries(dataset_dir, paths, sites, channels, cfg.workers)
        log.info("sample summaries: %d reused, %d read", summaries.reused, len(summaries.summarised))
        snapshot_summary, channel_summary = summaries.snapshots, summaries.channels
        samples_results = gx_run.run(
            "samples",
            [
                _Table(suites.SNAPSHOT_SUITE, snapshot_summary,
                       suites.snapshot_checks(cfg, channels, expected_samples), ("path",)),
                _Table(suites.CHANNEL_SUITE, channel_summary, suites.channel_checks(cfg), ("path", "channel")),
            ],
        )  # fmt: skip
        quarantined = _quarantine_entries(samples_results)
        write_quarantine(dataset_dir, quarantined)

        if quarantined:
            dropped = pa.array([q.file for q in quarantined], pa.string())
            table = table.filter(pc.invert(pc.is_in(table["path"].cast(pa.string()), value_set=dropped)))
        timeline = feature_timeline(table.to_pandas(), channels)
        features_results = gx_run.run(
            "features",
            [
                _Table(suites.FEATURES_SUITE, table,
                       suites.features_checks(cfg, channels, features, expected_samples, n_total), ("path",)),
                _Table(suites.TIMELINE_SUITE, timeline, suites.timeline_checks(cfg), ("path", "site", "timestamp")),
            ],
        )  # fmt: skip
        report = ValidationReport(
            target=dataset_dir,
            kind="dataset",
            n_rows=n_total,
            n_valid=table.num_rows,
            outcomes=[r.outcome for r in samples_results + features_results],
            quarantined=quarantined,
            docs_index=dataset_dir / "validation" / "index.html" if cfg.build_docs else None,
        )
        _finish(report, build)
    log.info(report.headline())
    return report


def validate_partitions(
    clients_dir: str | os.PathLike[str],
    training_paths: Iterable[str],
    cfg: ValidationConfig | None = None,
    docs_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Validate a federated partitioning: every client non-empty with enough rows, and the union of the clients
    equal to ``training_paths`` with no path in two clients. Reports (and Data Docs, default
    ``clients_dir/validation/``) are written like :func:`validate_dataset`'s; nothing is quarantined here.
    """
    cfg = cfg or ValidationConfig()
    clients_dir = Path(clients_dir).resolve()
    if not clients_dir.is_dir():
        raise FileNotFoundError(f"partition directory not found: {clients_dir}")
    training = list(training_paths)
    clients, coverage = partition_tables(clients_dir, training)
    target = Path(docs_dir).resolve() if docs_dir is not None else clients_dir / "validation"
    with _report_dir(target) as build:
        work = build / "tables"
        work.mkdir()
        gx_run = _GXRun(work, build if cfg.build_docs else None, cfg.max_examples)
        results = gx_run.run(
            "partitions",
            [
                _Table(suites.CLIENTS_SUITE, clients, suites.clients_checks(cfg), ("client",)),
                _Table(suites.COVERAGE_SUITE, coverage, suites.coverage_checks(), ("path", "clients")),
            ],
        )
        report = ValidationReport(
            target=clients_dir,
            kind="partitions",
            n_rows=len(set(training)),
            n_valid=int((coverage["n_clients"] > 0).sum()),
            outcomes=[r.outcome for r in results],
            docs_index=target / "index.html" if cfg.build_docs else None,
        )
        _finish(report, build)
    log.info(report.headline())
    return report
