"""Typed configuration with defaults. CLI flags and flow parameters map one-to-one onto these fields.

Every path has a default under ``data/`` (relative to the project directory, see :mod:`bearing_core.env`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

IMS_SAMPLES_PER_SNAPSHOT = 20_480
IMS_CHANNELS_8 = ("B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b")  # IMS 1st test
IMS_CHANNELS_4 = ("B1", "B2", "B3", "B4")  # IMS 2nd and 3rd tests


def channel_names(n_channels: int) -> tuple[str, ...]:
    """Channel names for an IMS file with ``n_channels`` columns (8 -> B1_a..B4_b, 4 -> B1..B4)."""
    if n_channels == 8:
        return IMS_CHANNELS_8
    if n_channels == 4:
        return IMS_CHANNELS_4
    raise ValueError(f"IMS files have 4 or 8 channels, not {n_channels}")


def _positive_widths(hidden: tuple[int, ...]) -> tuple[int, ...]:
    if any(width <= 0 for width in hidden):
        raise ValueError(f"hidden layer widths must be positive, got {hidden}")
    return hidden


#: Autoencoder hidden layer widths (encoder -> bottleneck -> decoder), each positive.
HiddenWidths = Annotated[tuple[int, ...], AfterValidator(_positive_widths)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataPaths(_Model):
    """Where data lives. Defaults follow the layout in README.md."""

    raw_root: Path = Field(Path("data/raw"), description="Raw IMS snapshot files, one folder per dataset")
    processed_root: Path = Field(Path("data/processed"), description="Parquet outputs, one folder per dataset")
    models_root: Path = Field(Path("data/models"), description="Versioned models")
    reports_root: Path = Field(Path("reports"), description="Run reports")


class RigConfig(_Model):
    """The test rig: sampling rate and bearing defect frequencies (IMS rig defaults, Rexnord ZA-2115)."""

    fs_hz: float = Field(20_000.0, gt=0, description="Sampling rate (the IMS readme says 20 kHz)")
    shaft_hz: float = Field(2000.0 / 60.0, gt=0, description="Shaft speed, 2,000 RPM")
    bpfo_hz: float = Field(236.4, gt=0, description="Ball pass frequency, outer race")
    bpfi_hz: float = Field(296.9, gt=0, description="Ball pass frequency, inner race")
    bsf_hz: float = Field(139.9, gt=0, description="Ball (roller) spin frequency")
    ftf_hz: float = Field(14.8, gt=0, description="Fundamental train (cage) frequency")
    band_hz: float = Field(4.0, gt=0, description="Half-width of each envelope-spectrum band around a defect line")
    harmonics: int = Field(3, ge=1, le=10, description="Defect-frequency harmonics summed in each band energy")
    envelope_highpass_hz: float = Field(
        1000.0, ge=0, description="Envelope analysis ignores content below this frequency (shaft harmonics)"
    )

    def defect_frequencies(self) -> dict[str, float]:
        return {"bpfo": self.bpfo_hz, "bpfi": self.bpfi_hz, "bsf": self.bsf_hz}


class IngestConfig(_Model):
    """Raw IMS directory -> processed Parquet dataset."""

    raw_dir: Path = Field(..., description="Directory of raw IMS files, optionally one sub-folder per site")
    out_dir: Path | None = Field(None, description="Output directory; default data/processed/<name of raw_dir>")
    expected_samples: int = Field(IMS_SAMPLES_PER_SNAPSHOT, gt=0, description="Samples (lines) per snapshot file")
    channels: int | None = Field(
        None, description="Channels per file (4 or 8); default: inferred from the dataset's first valid file"
    )
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="Parallel worker processes")
    batch_size: int = Field(32, ge=1, description="Files per worker task (amortises per-task overhead)")
    follow_symlinks: bool = Field(
        False,
        description="Follow symlinks wherever they point (DVC-style raw folders linking into a cache); default: only "
        "links into raw_dir are read. Each link is resolved once and its target recorded in manifest.parquet",
    )
    rig: RigConfig = Field(default_factory=RigConfig)

    @field_validator("channels")
    @classmethod
    def _valid_channels(cls, v: int | None) -> int | None:
        if v is not None and v not in (4, 8):
            raise ValueError("channels must be 4 or 8 (IMS format)")
        return v

    @model_validator(mode="after")
    def _raw_dir_exists(self) -> IngestConfig:
        if not Path(self.raw_dir).is_dir():
            raise ValueError(f"raw_dir does not exist or is not a directory: {self.raw_dir}")
        return self

    def resolved_out_dir(self, paths: DataPaths | None = None) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        paths = paths or DataPaths()
        return paths.processed_root / Path(self.raw_dir).resolve().name
