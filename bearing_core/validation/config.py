"""Typed thresholds of the data-validation stage (CLI flags and flow parameters map onto these fields).

Defaults are chosen for the NASA IMS rig: ASCII files with 3 decimals (a quantisation step of 0.001 g), healthy
channels with a standard deviation around 0.05-0.1 g and peaks below 1 g, snapshots 5-10 minutes apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ValidationConfig(BaseModel):
    """Thresholds of every expectation suite. ``None`` means "take it from the dataset's ``dataset.json``"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expected_samples: int | None = Field(
        None, gt=0, description="Samples per snapshot; default: dataset.json's expected_samples (IMS: 20,480)"
    )
    channels: tuple[str, ...] | None = Field(
        None, description="Expected channel names in file order; default: dataset.json's channels"
    )
    sensor_range_g: float = Field(
        10.0, gt=0, description="Accelerometer range: every sample must lie within +-sensor_range_g (g)"
    )
    flat_std_floor_g: float = Field(
        1e-4,
        ge=0,
        description=(
            "A channel whose standard deviation is below this (g) is a dead sensor (flat line). Ten times below "
            "the IMS quantisation step, so near-silent shut-down snapshots are not mistaken for dead sensors"
        ),
    )
    max_clip_fraction: float = Field(
        1e-3,
        ge=0,
        le=1,
        description=(
            "A channel is clipped when more than this fraction of its samples equal its max |x| "
            "(healthy IMS snapshots: 1 sample in 20,480, i.e. 5e-5)"
        ),
    )
    max_gap_factor: float = Field(
        3.0,
        gt=1,
        description="Warn when two consecutive snapshots of a site are more than F x its median interval apart",
    )
    shutdown_rms_ratio: float = Field(
        0.1,
        gt=0,
        lt=1,
        description=(
            "Warn (and list) snapshots whose mean channel rms is below this fraction of the site's median: "
            "shut-down snapshots at the end of a test, valid files but not healthy readings"
        ),
    )
    max_quarantine_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description=(
            "Snapshot-level failures quarantine the snapshot and do not stop the pipeline, unless more than this "
            "fraction of the dataset ends up quarantined (then the problem is systematic: an error)"
        ),
    )
    min_client_rows: int = Field(10, ge=1, description="Minimum rows per federated client partition")
    max_examples: int = Field(5, ge=1, le=100, description="Example values listed per failed expectation")
    workers: int = Field(4, ge=1, le=64, description="Threads reading samples files for the per-snapshot summaries")
    build_docs: bool = Field(True, description="Build the Great Expectations Data Docs HTML site")

    @field_validator("channels")
    @classmethod
    def _channels_unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"channels must be a non-empty list of distinct names, got {list(v)}")
        return v
