"""The per-bearing layout: one row per (snapshot, bearing), each bearing standardised by its own healthy moments.

Why. The default model input is one row per snapshot with every channel of the rig (8 inputs on the IMS 1st test),
so the autoencoder learns how the bearings move *together*. An operating change that shifts one bearing against
the others (e.g. the IMS 1st test's Nov 3 restart shifts bearing 1) then looks like a defect on a healthy bearing.
In this layout each bearing is its own "site": a row holds only that bearing's channels (``a`` and ``b`` on the
IMS 1st test), one shared model learns what a healthy bearing looks like, alarms are debounced per bearing and the
alarm's site *is* the bearing. With the natural partition, one client per bearing.

Standardisation is per bearing and local: each bearing's inputs are centred and scaled by the mean and population
std of its own healthy *training* rows (the healthy period of :class:`~bearing_core.inputs.InputConfig`, minus the
calibration holdout the partition writer will set aside, see :func:`~bearing_core.partition.writer.holdout_mask`),
so differences in sensor gain or mounting between bearings do not count as anomalies and nothing leaves the site.
Optionally the natural log is taken first (vibration levels are multiplicative).

:func:`write_per_bearing_dataset` writes this layout as a features-only processed dataset (same contract as
:mod:`bearing_core.features_import`), so partitioning, training, calibration and scoring run on it unchanged:

``features.parquet``
    timestamp, file, site = ``<site>/<bearing>``, path = ``<snapshot path>/<bearing>``, then float64
    ``<axis>_<feature>`` (``a_mean_abs``, ``b_mean_abs``), sorted by (timestamp, site). Quarantined snapshots of
    the source are left out.
``quarantine.parquet``
    empty (the source's exclusions are already applied).
``dataset.json``
    channels = the axes (``["a", "b"]``), the source's rig and sampling, ``layout: "per_bearing"``, the healthy
    rule, the per-bearing moments (to audit and to reproduce the transform) and the source's content hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.features_import import write_features_only_dataset
from bearing_core.fingerprint import sha256_files
from bearing_core.inputs import (
    DATASET_FILE,
    FEATURES_FILE,
    QUARANTINE_FILE,
    InputConfig,
    healthy_period,
    load_features,
)
from bearing_core.io import OutputDirRefused, check_output_dir
from bearing_core.partition.writer import holdout_mask
from bearing_core.scaling import DEFAULT_MIN_STD

LAYOUT_NAME = "per_bearing"
OUTPUT_KIND = "per-bearing dataset"
"""Kind of output (:data:`bearing_core.io.OUTPUT_MARKER`) of :func:`write_per_bearing_dataset`."""
SINGLE_AXIS = "x"
RELATIVE_PREFIX = "rel_"
"""Channel (axis) name prefix of a relative input: ``rel_a_mean_abs`` = axis ``a``'s level against the rig's."""
"""Axis name of a bearing with one channel (IMS 2nd/3rd tests: channel ``B1`` → bearing ``B1``, axis ``x``)."""


class PerBearingConfig(BaseModel):
    """What a per-bearing row holds and how it is transformed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: tuple[str, ...] = Field(
        ("mean_abs",),
        min_length=1,
        description="Features taken for each channel of a bearing (columns <axis>_<feature>)",
    )
    log: bool = Field(
        False, description="Take the natural log of every input before standardising (inputs must be > 0)"
    )
    min_std: float = Field(
        DEFAULT_MIN_STD, gt=0, description="Floor of a bearing's healthy std (a constant input scales to 0, not inf)"
    )
    relative: Literal["off", "add", "only"] = Field(
        "off",
        description="Inputs relative to the rig: each axis's (log) level minus the median of the same axis on the "
        "site's other bearings (needs >= 3 bearings a site; removes what all bearings of a rig do together: load, "
        "speed, temperature). 'add' = own and relative inputs, 'only' = relative inputs alone",
    )


@dataclass
class PerBearingResult:
    """What :func:`write_per_bearing_dataset` wrote."""

    out_dir: Path
    rows: int
    sites: list[str]
    """The per-bearing sites, ``<site>/<bearing>``, sorted."""
    axes: list[str]
    input_columns: list[str]
    """``<axis>_<feature>`` in row order (axis-major, like ``features.parquet``)."""


def bearing_axes(channels: list[str]) -> dict[str, list[str]]:
    """Channels grouped by bearing, as ``{bearing: [axis, ...]}`` in channel order.

    A channel ``<bearing>_<axis>`` (``B3_a``) belongs to bearing ``B3`` with axis ``a``; a channel without ``_``
    is a bearing with the single axis :data:`SINGLE_AXIS`. Every bearing must have the same axes, in the same order,
    so that one model fits all of them.
    """
    if not channels:
        raise ValueError("no channels")
    grouped: dict[str, list[str]] = {}
    for channel in channels:
        bearing, _, axis = channel.partition("_")
        grouped.setdefault(bearing, []).append(axis or SINGLE_AXIS)
    reference_bearing, reference = next(iter(grouped.items()))
    for bearing, axes in grouped.items():
        if axes != reference:
            raise ValueError(
                f"bearing {bearing} has axes {axes} but {reference_bearing} has {reference}: the per-bearing layout "
                f"needs the same channels on every bearing (channels: {', '.join(channels)})"
            )
    return grouped


def _channel(bearing: str, axis: str) -> str:
    return bearing if axis == SINGLE_AXIS else f"{bearing}_{axis}"


def _training_mask(features: pd.DataFrame, input_cfg: InputConfig) -> np.ndarray:
    """Rows of ``features`` the model will train on: each site's healthy period minus its calibration holdout."""
    healthy = healthy_period(features, input_cfg)
    held = np.zeros(len(healthy), dtype=bool)
    for rows in healthy.groupby("site", sort=False, observed=True).indices.values():  # one entry per site
        held[rows] = holdout_mask(len(rows), input_cfg.holdout_fraction, input_cfg.holdout_mode)
    return features["path"].isin(healthy["path"].to_numpy()[~held]).to_numpy()


def _selected_training_mask(
    features: pd.DataFrame, bearings: list[str], selection: pd.DataFrame, input_cfg: InputConfig
) -> np.ndarray:
    """(snapshots, bearings) rows the model will train on under a healthy-rows ``selection`` of per-bearing paths
    (:mod:`bearing_core.healthy`): each bearing's selected rows minus its calibration holdout."""
    paths = features["path"].astype(str).to_numpy()
    per_bearing = pd.DataFrame(
        {
            "row": np.repeat(np.arange(len(features)), len(bearings)),
            "bearing": np.tile(np.arange(len(bearings)), len(features)),
            "path": np.repeat(paths, len(bearings)) + "/" + np.tile(np.asarray(bearings, dtype=object), len(features)),
            "site": np.repeat(features["site"].astype(str).to_numpy(), len(bearings)),
        }
    )
    chosen = per_bearing[per_bearing["path"].isin(selection["path"].astype(str))]  # features are time-ordered
    held = np.zeros(len(chosen), dtype=bool)
    for rows in chosen.groupby(["site", "bearing"], sort=False).indices.values():
        held[rows] = holdout_mask(len(rows), input_cfg.holdout_fraction, input_cfg.holdout_mode)
    mask = np.zeros((len(features), len(bearings)), dtype=bool)
    kept = chosen[~held]
    mask[kept["row"].to_numpy(), kept["bearing"].to_numpy()] = True
    return mask


def write_per_bearing_dataset(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    input_cfg: InputConfig,
    cfg: PerBearingConfig | None = None,
    healthy: pd.DataFrame | None = None,
) -> PerBearingResult:
    """Write the per-bearing layout of the processed dataset ``source_dir`` to ``out_dir`` (see the module docstring).

    ``input_cfg`` defines the healthy period whose training rows give each bearing's moments; partition the
    result with the same ``input_cfg`` (on the per-bearing sites the healthy period selects the same snapshots, so
    the moments come from exactly the rows the model trains on). Outputs are written atomically, ``dataset.json``
    last. ``out_dir`` must not be ``source_dir`` and must be absent, empty or an earlier per-bearing layout
    (:class:`bearing_core.io.OutputDirRefused` otherwise).

    ``healthy``: a selection of per-bearing rows (paths ``<snapshot path>/<bearing>``, the rolling policy of
    :mod:`bearing_core.healthy`) replacing ``input_cfg``'s healthy period for the moments; a bearing without any
    selected row keeps the moments of the earlier layout in ``out_dir`` (it is in alarm: nothing new is learned).
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    cfg = cfg or PerBearingConfig()
    if out_dir.resolve() == source_dir.resolve():
        raise OutputDirRefused(f"the output {out_dir} is the input dataset: write the per-bearing layout elsewhere")
    check_output_dir(out_dir, OUTPUT_KIND)  # before any work; claimed again when written
    source_meta_path = source_dir / DATASET_FILE
    if not source_meta_path.is_file():
        raise FileNotFoundError(f"{source_meta_path} not found: is {source_dir} a processed dataset?")
    source_meta = json.loads(source_meta_path.read_text(encoding="utf-8"))
    grouped = bearing_axes(list(source_meta["channels"]))
    bearings, axes = list(grouped), next(iter(grouped.values()))
    features = load_features(source_dir)
    if features.empty:
        raise ValueError(f"{source_dir / FEATURES_FILE}: no valid snapshot")
    inputs = [f"{axis}_{feature}" for axis in axes for feature in cfg.features]
    source_columns = [f"{_channel(b, axis)}_{feature}" for b in bearings for axis in axes for feature in cfg.features]
    missing = [c for c in source_columns if c not in features.columns]
    if missing:
        raise ValueError(
            f"{source_dir / FEATURES_FILE}: missing columns {missing} for features {list(cfg.features)}; "
            f"available: {', '.join(c for c in features.columns if c not in ('timestamp', 'file', 'site', 'path'))}"
        )
    n, n_bearings, n_inputs = len(features), len(bearings), len(inputs)
    if cfg.relative != "off" and n_bearings < 3:
        raise ValueError(
            f"relative inputs need at least 3 bearings a site to take the median of the others; "
            f"{source_dir} has {n_bearings} ({', '.join(bearings)})"
        )
    values = features[source_columns].to_numpy(dtype=np.float64, copy=True).reshape(n, n_bearings, n_inputs)
    if cfg.log:
        bad = ~(values > 0)
        if bad.any():
            row, bearing, column = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"log needs inputs > 0: {source_columns[bearing * n_inputs + column]} = "
                f"{float(values[row, bearing, column])!r} at {features['path'].iloc[row]}"
            )
        values = np.log(values)
    channels = list(axes)
    if cfg.relative != "off":
        values, inputs, channels = _with_relative(values, inputs, axes, cfg.relative)
        n_inputs = len(inputs)
    if healthy is None:
        training = np.repeat(_training_mask(features, input_cfg)[:, None], n_bearings, axis=1)
    else:
        training = _selected_training_mask(features, bearings, healthy, input_cfg)
    site_codes, source_sites = pd.factorize(features["site"].astype(str), sort=True)
    earlier = _earlier_standardisation(out_dir)
    standardisation: dict[str, dict[str, object]] = {}
    for code, site in enumerate(source_sites):
        at_site = site_codes == code
        for k, bearing in enumerate(bearings):
            name = f"{site}/{bearing}"
            train_rows = values[at_site & training[:, k], k]
            if len(train_rows):
                mean, std = train_rows.mean(axis=0), np.maximum(train_rows.std(axis=0), cfg.min_std)
            elif name in earlier:
                mean, std = np.asarray(earlier[name]["mean"]), np.asarray(earlier[name]["std"])
            else:
                raise ValueError(f"bearing {name} has no healthy training row and no earlier moments in {out_dir}")
            values[at_site, k] = (values[at_site, k] - mean) / std
            standardisation[name] = {"mean": mean.tolist(), "std": std.tolist(), "training_rows": len(train_rows)}
    per_bearing = pd.DataFrame(
        {
            "timestamp": np.repeat(features["timestamp"].to_numpy(), n_bearings),
            "file": np.repeat(features["file"].astype(str).to_numpy(), n_bearings),
            "site": np.repeat(features["site"].astype(str).to_numpy(), n_bearings)
            + "/"
            + np.tile(np.asarray(bearings, dtype=object), n),
            "path": np.repeat(features["path"].astype(str).to_numpy(), n_bearings)
            + "/"
            + np.tile(np.asarray(bearings, dtype=object), n),
            **dict(zip(inputs, values.reshape(n * n_bearings, n_inputs).T)),
        }
    ).sort_values(["timestamp", "site"], kind="stable")
    sites = sorted(standardisation)
    write_features_only_dataset(
        out_dir,
        per_bearing,
        inputs,
        {
            "channels": channels,
            "expected_samples": source_meta.get("expected_samples"),
            "fs_hz": source_meta.get("fs_hz"),
            "features": list(cfg.features),
            "sites": sites,
            "rig": source_meta.get("rig"),
            "layout": LAYOUT_NAME,
            "bearings": {
                f"{site}/{b}": [_channel(b, c.removeprefix(RELATIVE_PREFIX)) for c in channels]
                for site in source_sites
                for b in bearings
            },
            "transform": {
                "log": cfg.log,
                "relative": cfg.relative,
                "min_std": cfg.min_std,
                "healthy": input_cfg.model_dump(mode="json"),
                "standardisation": standardisation,
                **({} if healthy is None else {"healthy_rows": selection_digest(healthy)}),
            },
            "source": {
                "dataset": str(source_dir.resolve()),
                "sha256": sha256_files(source_dir / name for name in (FEATURES_FILE, QUARANTINE_FILE, DATASET_FILE)),
            },
        },
        kind=OUTPUT_KIND,
    )
    return PerBearingResult(out_dir=out_dir, rows=len(per_bearing), sites=sites, axes=channels, input_columns=inputs)


def _earlier_standardisation(out_dir: Path) -> dict[str, dict[str, object]]:
    """The per-bearing moments of the layout already in ``out_dir`` ({} when there is none)."""
    try:
        return dict(json.loads((out_dir / DATASET_FILE).read_text(encoding="utf-8"))["transform"]["standardisation"])
    except (OSError, KeyError, TypeError, ValueError):
        return {}


def selection_digest(healthy: pd.DataFrame) -> str:
    """Content hash of a healthy-rows selection (its sorted paths), recorded with the transform."""
    import hashlib

    paths = np.sort(healthy["path"].astype(str).to_numpy())
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _with_relative(
    values: np.ndarray, inputs: list[str], axes: list[str], mode: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Append (``add``) or substitute (``only``) each input's level relative to the same input of the site's other
    bearings (their median) — ``values`` is (snapshots, bearings, inputs), in log units when the levels are."""
    n_bearings = values.shape[1]
    others = np.stack(
        [np.delete(values, b, axis=1) for b in range(n_bearings)], axis=1
    )  # (n, bearings, others, inputs)
    relative = values - np.median(others, axis=2)
    rel_inputs = [RELATIVE_PREFIX + name for name in inputs]
    rel_axes = [RELATIVE_PREFIX + axis for axis in axes]
    if mode == "only":
        return relative, rel_inputs, rel_axes
    return np.concatenate([values, relative], axis=2), [*inputs, *rel_inputs], [*axes, *rel_axes]


def source_site_scores(scores: pd.DataFrame, dataset_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Scores of a per-bearing dataset folded back to one row per source snapshot, in the source's site names.

    Per snapshot the row of the bearing that matters most is kept: an alarming one first, then an anomalous one,
    then the one with the highest ``score / threshold``. ``site``, ``path`` and ``top_channel`` are translated to the
    source dataset's (``1st_test/B3`` with top axis ``a`` → site ``1st_test``, channel ``B3_a``), so the result
    compares with ground truth (:func:`bearing_core.evaluation.evaluate_against_ground_truth`) like the scores of a
    snapshot-layout model. ``alarm`` keeps each bearing's own debounce: a snapshot is in alarm when any bearing is.
    """
    meta_path = Path(dataset_dir) / DATASET_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if meta.get("layout") != LAYOUT_NAME:
        raise ValueError(f"{meta_path}: not a per-bearing dataset (write one with `bearing per-bearing`)")
    axes = list(meta["channels"])
    site = scores["site"].astype(str)
    unknown = sorted(set(site) - set(meta["bearings"]))
    if unknown:
        raise ValueError(f"scores name sites {unknown} that are not bearings of {meta_path}")
    parts = site.str.rpartition("/")
    axis_index = pd.Categorical(scores["top_channel"].astype(str), categories=axes).codes
    if (axis_index < 0).any():
        raise ValueError(f"top_channel values {sorted(set(scores['top_channel']) - set(axes))} are not axes {axes}")
    site_codes, bearing_sites = pd.factorize(site)
    channel_of = np.array([meta["bearings"][s] for s in bearing_sites], dtype=object).reshape(len(bearing_sites), -1)
    ratio = scores["score"].to_numpy(dtype=np.float64) / scores["threshold"].to_numpy(dtype=np.float64)
    folded = scores.assign(
        site=parts[0].to_numpy(),
        path=scores["path"].astype(str).str.rpartition("/")[0].to_numpy(),
        top_channel=channel_of[site_codes, axis_index],
        bearing=parts[2].to_numpy(),
    )
    order = np.lexsort((-ratio, ~folded["is_anomaly"].to_numpy(bool), ~folded["alarm"].to_numpy(bool)))
    folded = folded.iloc[order].drop_duplicates("path", keep="first")
    return folded.sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)
