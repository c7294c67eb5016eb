"""The expectation suites, in code: every rule the data must satisfy, with its severity and consequence.

Each rule is a :class:`Check`: a stable name (``suite.rule``), a Great Expectations 1.x expectation, a severity
and what a failure does:

* ``severity="error"``, ``quarantine=False``: the pipeline stops before training (:class:`ValidationFailed`).
* ``severity="error"``, ``quarantine=True`` (sample-level rules): each failing snapshot is written to
  ``quarantine.parquet`` with stage ``"validate"`` and the run goes on without it; the dataset-level rule
  ``features.enough_snapshots`` turns a systematic failure (too many quarantined snapshots) into a stop.
* ``severity="warning"``: reported (with the rows concerned) and the run goes on.

The severity is also set on the GX expectation (``critical``/``warning``) and the check name, severity and
consequence are in its ``meta``, so the Data Docs and the JSON results carry them too. Thresholds come from
:class:`~bearing_core.validation.config.ValidationConfig`; nothing here reads data. Great Expectations is
imported inside the builders only (it costs ~3 s and 300 MB), never at import time of this module.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bearing_core.validation.config import ValidationConfig
from bearing_core.validation.summaries import expected_columns, expected_types

Severity = Literal["error", "warning"]

SNAPSHOT_SUITE = "samples_snapshot"
CHANNEL_SUITE = "samples_channel"
FEATURES_SUITE = "features"
TIMELINE_SUITE = "features_timeline"
CLIENTS_SUITE = "partitions_clients"
COVERAGE_SUITE = "partitions_coverage"

KEY_COLUMNS: tuple[str, ...] = ("timestamp", "file", "site", "path")
"""Identifying columns of the features table, before the ``<channel>_<feature>`` columns."""

_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class Check:
    """One validation rule: a named GX expectation with a severity and a failure consequence."""

    name: str
    severity: Severity
    quarantine: bool
    expectation: Any  # great_expectations.expectations.Expectation (GX is imported lazily)
    family: str  # checks repeated per column share a family (e.g. "features.<channel>_<feature>.range")
    description: str  # what the data must satisfy, with the thresholds

    @property
    def column(self) -> str | None:
        """The column the expectation looks at (None for table-level expectations)."""
        return getattr(self.expectation, "column", None)


def _check(
    name: str,
    description: str,
    expectation_cls: Any,
    severity: Severity = "error",
    quarantine: bool = False,
    family: str | None = None,
    **kwargs: Any,
) -> Check:
    """Build a Check; the description (shown in the Data Docs) starts with the check name and severity."""
    expectation = expectation_cls(
        **kwargs,
        severity="critical" if severity == "error" else "warning",
        description=f"**{name}** [{severity}{', quarantines the snapshot' if quarantine else ''}]: {description}",
        meta={"check": name, "severity": severity, "quarantine": quarantine},
    )
    return Check(name, severity, quarantine, expectation, family=family or name, description=description)


def snapshot_checks(cfg: ValidationConfig, channels: Sequence[str], expected_samples: int) -> list[Check]:
    """Schema rules of each samples file, on the snapshot summary (one row per snapshot)."""
    import great_expectations.expectations as gxe

    cols, types = expected_columns(channels), expected_types(channels)
    return [
        _check("snapshot.readable", "the samples file exists and is a readable Parquet file",
               gxe.ExpectColumnValuesToBeInSet, quarantine=True, column="read_error", value_set=[""]),
        _check("snapshot.columns", f"columns are exactly `{cols}` (timestamp, then the channels in order)",
               gxe.ExpectColumnValuesToBeInSet, quarantine=True, column="columns", value_set=[cols]),
        _check("snapshot.types", f"column types are `{types}`",
               gxe.ExpectColumnValuesToBeInSet, quarantine=True, column="types", value_set=[types]),
        _check("snapshot.sample_count", f"exactly {expected_samples:,} samples per snapshot",
               gxe.ExpectColumnValuesToBeBetween, quarantine=True, column="n_rows",
               min_value=expected_samples, max_value=expected_samples),
    ]  # fmt: skip


def channel_checks(cfg: ValidationConfig) -> list[Check]:
    """Value rules of each channel of each snapshot, on the channel summary (one row per snapshot x channel)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    r = cfg.sensor_range_g
    return [
        _check("samples.no_nulls", "no null samples", gxe.ExpectColumnValuesToBeBetween,
               quarantine=True, column="n_null", min_value=0, max_value=0),
        _check("samples.finite", "no NaN or infinite samples", gxe.ExpectColumnValuesToBeBetween,
               quarantine=True, column="n_nonfinite", min_value=0, max_value=0),
        _check("samples.min_in_range", f"smallest sample >= -{r:g} g (sensor range)", gxe.ExpectColumnValuesToBeBetween,
               quarantine=True, column="min", min_value=-r),
        _check("samples.max_in_range", f"largest sample <= {r:g} g (sensor range)", gxe.ExpectColumnValuesToBeBetween,
               quarantine=True, column="max", max_value=r),
        _check("samples.not_flat", f"standard deviation >= {cfg.flat_std_floor_g:g} g (else a dead sensor)",
               gxe.ExpectColumnValuesToBeBetween, quarantine=True, column="std", min_value=cfg.flat_std_floor_g),
        _check("samples.not_clipped",
               f"at most {cfg.max_clip_fraction:g} of the samples sit at the channel's max |x| (else clipped; "
               "flat channels are left to samples.not_flat)",
               gxe.ExpectColumnValuesToBeBetween, quarantine=True, column="clip_fraction",
               max_value=cfg.max_clip_fraction,
               # a flat channel is all "at its max": that is samples.not_flat's finding, not clipping
               row_condition=Column("std") >= cfg.flat_std_floor_g),
    ]  # fmt: skip


def feature_bounds(feature: str, cfg: ValidationConfig, expected_samples: int) -> tuple[float, float, str]:
    """Plausible ``(min, max, why)`` of one feature of one channel (bounds are inclusive).

    Amplitudes are bounded by the sensor range; crest, kurtosis and skewness by their mathematical limits for
    ``n`` samples (crest <= sqrt(n), Pearson kurtosis in [1, n], |skewness| <= sqrt(n)); envelope energies are
    non-negative. A tiny tolerance absorbs float rounding at the exact limits. Any bound also rejects inf.
    """
    r, n, tol = cfg.sensor_range_g, float(expected_samples), 1e-9
    if feature in ("mean_abs", "rms", "std", "peak"):
        return 0.0, r, f"an amplitude: in [0, {r:g}] g"
    if feature == "crest":
        return 1.0 - tol, math.sqrt(n) * (1 + tol), f"peak/rms: in [1, sqrt(n)={math.sqrt(n):.4g}]"
    if feature == "kurtosis":
        return 1.0 - tol, n * (1 + tol), f"Pearson kurtosis: in [1, n={n:.0f}]"
    if feature == "skewness":
        return -math.sqrt(n) * (1 + tol), math.sqrt(n) * (1 + tol), f"skewness: |s| <= sqrt(n)={math.sqrt(n):.4g}"
    if feature.startswith("env_"):
        return 0.0, _FLOAT_MAX, "an envelope band energy: finite and >= 0"
    return -_FLOAT_MAX, _FLOAT_MAX, "finite"


def features_checks(
    cfg: ValidationConfig, channels: Sequence[str], features: Sequence[str], expected_samples: int, n_total: int
) -> list[Check]:
    """Schema and value rules of the features table (run on its non-quarantined rows).

    ``n_total`` is the number of rows before quarantine: ``features.enough_snapshots`` requires that at most
    ``cfg.max_quarantine_fraction`` of them were quarantined (and at least one row remains).
    """
    import great_expectations.expectations as gxe

    feature_cols = [f"{ch}_{f}" for ch in channels for f in features]
    min_rows = max(1, math.ceil(n_total * (1.0 - cfg.max_quarantine_fraction)))
    checks = [
        _check("features.columns", "columns are timestamp, file, site, path and one <channel>_<feature> per "
               f"channel and feature ({len(KEY_COLUMNS) + len(feature_cols)} columns)",
               gxe.ExpectTableColumnsToMatchSet, column_set=[*KEY_COLUMNS, *feature_cols], exact_match=True),
        _check("features.enough_snapshots",
               f"at least {min_rows} of the {n_total} snapshots survive quarantine "
               f"(at most {cfg.max_quarantine_fraction:.0%} quarantined)",
               gxe.ExpectTableRowCountToBeBetween, min_value=min_rows),
        _check("features.timestamp.type", "timestamp is a datetime64 column", gxe.ExpectColumnValuesToBeOfType,
               family="features.<key>.type", column="timestamp", type_="datetime64[us]"),
    ]  # fmt: skip
    for col in ("file", "site", "path"):
        checks.append(_check(f"features.{col}.type", f"{col} is a string column", gxe.ExpectColumnValuesToBeOfType,
                             family="features.<key>.type", column=col, type_="str"))  # fmt: skip
    for col in KEY_COLUMNS:
        checks.append(_check(f"features.{col}.not_null", f"{col} is never null", gxe.ExpectColumnValuesToNotBeNull,
                             family="features.<key>.not_null", column=col))  # fmt: skip
    checks += [
        _check("features.path.unique", "path (the snapshot key) is unique", gxe.ExpectColumnValuesToBeUnique,
               column="path"),
        _check("features.site_timestamp.unique", "no two snapshots of a site share a timestamp",
               gxe.ExpectCompoundColumnsToBeUnique, column_list=["site", "timestamp"]),
    ]  # fmt: skip
    for ch in channels:
        for feat in features:
            col = f"{ch}_{feat}"
            lo, hi, why = feature_bounds(feat, cfg, expected_samples)
            checks += [
                _check(f"features.{col}.type", f"{col} is float64", gxe.ExpectColumnValuesToBeOfType,
                       family="features.<channel>_<feature>.type", column=col, type_="float64"),
                _check(f"features.{col}.not_null", f"{col} is never NaN/null", gxe.ExpectColumnValuesToNotBeNull,
                       family="features.<channel>_<feature>.not_null", column=col),
                _check(f"features.{col}.range", f"{col} is {why}", gxe.ExpectColumnValuesToBeBetween,
                       family=f"features.<channel>_{feat}.range", column=col, min_value=lo, max_value=hi),
            ]  # fmt: skip
    return checks


def timeline_checks(cfg: ValidationConfig) -> list[Check]:
    """Time-order and operating-state rules, on the per-site timeline derived from the features table."""
    import great_expectations.expectations as gxe

    return [
        _check("timeline.increasing", "timestamps strictly increase within each site (in file order): "
               "no duplicate, no step back", gxe.ExpectColumnValuesToBeBetween,
               column="interval_s", min_value=0, strict_min=True),
        _check("timeline.gaps", f"no gap longer than {cfg.max_gap_factor:g} x the site's median interval",
               gxe.ExpectColumnValuesToBeBetween, severity="warning", column="gap_ratio",
               max_value=cfg.max_gap_factor),
        _check("timeline.shutdown", f"mean channel rms >= {cfg.shutdown_rms_ratio:g} x the site's median "
               "(else a shut-down snapshot: valid but not a healthy reading)",
               gxe.ExpectColumnValuesToBeBetween, severity="warning", column="rms_ratio",
               min_value=cfg.shutdown_rms_ratio),
    ]  # fmt: skip


def clients_checks(cfg: ValidationConfig) -> list[Check]:
    """Rules of each federated client partition file, on the per-client summary."""
    import great_expectations.expectations as gxe

    return [
        _check("partitions.exists", "the partition directory holds at least one client_<k>.parquet",
               gxe.ExpectTableRowCountToBeBetween, min_value=1),
        _check("partitions.readable", "each client file is readable and has the path and split columns",
               gxe.ExpectColumnValuesToBeInSet, column="problem", value_set=[""]),
        _check("partitions.non_empty", "every client has at least one row", gxe.ExpectColumnValuesToBeBetween,
               column="n_rows", min_value=1),
        _check("partitions.min_rows", f"every client has at least {cfg.min_client_rows} rows",
               gxe.ExpectColumnValuesToBeBetween, column="n_rows", min_value=cfg.min_client_rows),
    ]  # fmt: skip


def coverage_checks() -> list[Check]:
    """Rules tying the partitions to the training set, on the per-path coverage table."""
    import great_expectations.expectations as gxe

    return [
        _check("partitions.no_overlap", "no row (path) is in two clients", gxe.ExpectColumnValuesToBeBetween,
               column="n_clients", max_value=1),
        _check("partitions.covers_training", "every training row is in a client", gxe.ExpectColumnValuesToBeBetween,
               column="n_clients", min_value=1),
        _check("partitions.only_training", "every partitioned row belongs to the training set",
               gxe.ExpectColumnValuesToBeInSet, column="in_training", value_set=[True]),
    ]  # fmt: skip
