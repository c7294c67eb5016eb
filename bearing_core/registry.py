"""Model registry, one per dataset: versioned model directories, each dataset's ``latest`` champion and
champion/challenger promotion.

Layout under ``models_root`` (:attr:`bearing_core.config.DataPaths.models_root`, default ``data/models``), where
``<dataset>`` is the name of the processed dataset directory the version was trained on (``demo`` for
``data/processed/demo``; :func:`dataset_name`)::

    <dataset>/<version>/weights.pt, config.json, scaler.json   the model (bearing_core.model_io)
    <dataset>/<version>/metrics.parquet                        per-round metrics (clients, global, centralized)
    <dataset>/<version>/threshold.json                         alarm threshold, when calibrated before publishing
    <dataset>/<version>/fingerprint.json                       DataFingerprint: dataset + partition manifest hashes
    <dataset>/<version>/MODEL_CARD.md                          human-readable card (bearing_core.model_card)
    <dataset>/<version>/COMPLETE                               commit marker: version, creation time, file sha256s
    <dataset>/<version>/promotion.json                         the promotion decision (promote_if_better, promote)
    <dataset>/latest -> <version>                              the dataset's champion (relative symlink)

**One registry per dataset.** A model scores the dataset it was trained on (same input columns): the champion
of one dataset is never compared with, replaced by, or used to score another dataset. ``latest`` is always a
dataset's champion: :func:`resolve_model` (the one resolver of every command and flow) resolves ``latest`` for a
named dataset. A registry of the earlier flat layout (``<version>/`` and ``latest`` at the top) is moved into this
one by :func:`migrate_flat_registry`, which every entry point runs first (once: afterwards there is nothing to
move).

**Atomic publication.** :func:`publish_model` assembles a version in a hidden staging directory beside its target
(``<dataset>/.<version>.staging-*``), writes ``COMPLETE`` last, then renames the directory into place. A reader
therefore never sees a half-written version, and only directories holding ``COMPLETE`` count as versions: the raw
output of a training run in the registry (no ``COMPLETE`` yet) is not listed, not resolvable by name, not
promotable. Hidden directories (a staging directory left by a killed publisher) are ignored and may be deleted at
any time.

**The champion.** ``<dataset>/latest`` is a relative symlink swapped atomically (a new symlink under a temporary
name, then ``os.replace`` onto ``latest``), so it always names one whole version. Where symlinks are unavailable
(some Windows or network filesystems), ``latest`` is instead a small text file holding the version name, also
replaced atomically; every reader here accepts both forms.

**Promotion.** :func:`promote_if_better` compares a challenger only with the champion of its own dataset. When the
two models have other inputs (input columns, or a ``layout`` recorded in config or fingerprint), the champion
cannot score the dataset as it is now and the challenger replaces it. Otherwise both are evaluated on the *same*
healthy validation rows, each through its own scaler, and compared by reconstruction MSE **in the original input
units** (``mean((scaler⁻¹(model(scaler(x))) − x)²)``). Each model's scaled-space MSE is not comparable across
models: the same reconstruction, measured in units of a larger training std, looks smaller. In original units
both models are held to one yardstick whatever their scalers. (All default inputs are the same feature of every
channel, so no column dominates by its unit.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.config import DataPaths
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.inputs import DATASET_FILE, FEATURES_FILE, META_COLUMNS, PER_BEARING_DIR, QUARANTINE_FILE
from bearing_core.io import remove_stale_temp_files, replace_dir, write_json_atomic, write_text_atomic
from bearing_core.model_card import DataFingerprint, render_model_card
from bearing_core.model_io import (
    CONFIG_FILE,
    GLOBAL_CLIENT,
    METRICS_FILE,
    MODEL_KIND,
    SCALER_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    load_model,
)
from bearing_core.partition.writer import MANIFEST_FILE, SPLIT_HOLDOUT, load_manifest, read_client

LATEST = "latest"
COMPLETE_FILE = "COMPLETE"
STALE_AFTER_S = 24 * 3600.0
"""Age after which a hidden work directory / temp file in the models root is debris of a killed writer."""
MODEL_CARD_FILE = "MODEL_CARD.md"
FINGERPRINT_FILE = "fingerprint.json"
PROMOTION_FILE = "promotion.json"
THRESHOLD_FILE = "threshold.json"

_REGISTRY_FILES = (COMPLETE_FILE, MODEL_CARD_FILE, FINGERPRINT_FILE, PROMOTION_FILE)
"""Files the registry writes itself: never copied from a training directory, always regenerated."""
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LAYOUT_KEY = "layout"
"""Key of a model's input layout (e.g. ``per_bearing``) in its fingerprint.json or config.json's ``extra``, if
recorded: two models with other layouts are not comparable, even with the same input column names."""


class VersionInfo(BaseModel):
    """One published version, as listed by :func:`list_versions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(..., description="Directory name under models_root/<dataset>")
    path: Path = Field(..., description="The version directory")
    created: datetime = Field(..., description="When it was published (UTC)")
    dataset: str = Field(..., description="Dataset it was trained on (its registry: models_root/<dataset>)")
    strategy: str = Field(..., description="Federated strategy (or 'unknown')")
    eval_mse: float | None = Field(None, description="Final global holdout MSE of training (standardised units)")
    threshold: float | None = Field(None, description="Alarm threshold from threshold.json, if calibrated")
    is_latest: bool = Field(False, description="True for the champion that its dataset's 'latest' points to")


class PromotionDecision(BaseModel):
    """Outcome of a champion/challenger comparison (also saved as the challenger's ``promotion.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promoted: bool = Field(..., description="True when the challenger is now its dataset's 'latest'")
    reason: str = Field(..., description="Why, in one sentence")
    challenger: str = Field(..., description="Challenger version")
    champion: str | None = Field(None, description="Champion version at decision time (None if there was none)")
    challenger_mse: float | None = Field(None, description="Challenger's reconstruction MSE, original units")
    champion_mse: float | None = Field(None, description="Champion's reconstruction MSE on the same rows")
    tolerance: float = Field(0.0, description="Relative tolerance: promoted if challenger <= champion x (1 + tol)")
    eval_rows: int = Field(0, ge=0, description="Validation rows both models were scored on")
    decided_at: datetime = Field(..., description="Decision time (UTC)")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _check_version_name(version: str) -> str:
    if not _VERSION_RE.fullmatch(version) or version == LATEST:
        raise ValueError(f"invalid version name {version!r}: letters, digits, '_', '-', '.'; not '{LATEST}'")
    return version


def is_complete(version_dir: str | os.PathLike[str]) -> bool:
    """True when ``version_dir`` is a fully published version (it holds the ``COMPLETE`` marker)."""
    return (Path(version_dir) / COMPLETE_FILE).is_file()


def _root(models_root: str | os.PathLike[str] | None) -> Path:
    return Path(models_root) if models_root is not None else DataPaths().models_root


def dataset_name(dataset_dir: str | os.PathLike[str]) -> str:
    """The registry name of the processed dataset in ``dataset_dir``: its directory's name (``demo`` for
    ``data/processed/demo``, and for its per-bearing layout ``data/processed/demo/per_bearing``), which must be usable
    as one directory name of the registry. Champion/challenger compares models of one dataset with the same inputs:
    a model of the other layout replaces the champion (it cannot score the layout the champion was trained on)."""
    path = Path(dataset_dir).resolve()
    name = path.name
    if name == PER_BEARING_DIR and (path.parent / DATASET_FILE).is_file():
        name = path.parent.name  # the pipeline's per-bearing layout of a dataset shares that dataset's registry
    if not name or name.startswith(".") or name == LATEST:
        raise ValueError(
            f"{dataset_dir}: a dataset directory named {name!r} cannot have a model registry "
            f"(hidden, empty or '{LATEST}'): rename it"
        )
    return name


def registry_dir(models_root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """The registry of ``dataset``: ``models_root/<dataset>`` (its versions and its ``latest``)."""
    if not dataset or dataset.startswith(".") or dataset == LATEST or Path(dataset).name != dataset:
        raise ValueError(f"invalid dataset name {dataset!r}: one directory name, not hidden, not '{LATEST}'")
    return _root(models_root) / dataset


def _version_dirs(registry: Path) -> list[Path]:
    """The published version directories of one dataset's registry (hidden, unpublished and ``latest`` left out)."""
    if not registry.is_dir():
        return []
    return [
        p
        for p in registry.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and is_complete(p)
    ]


def datasets(models_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the datasets that have a registry under ``models_root`` (a published version or a champion),
    sorted. Directories holding only unpublished training output are not registries."""
    root = _root(models_root)
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        if not entry.is_dir() or entry.is_symlink() or entry.name.startswith(".") or is_complete(entry):
            continue
        if _version_dirs(entry) or current_champion(root, entry.name) is not None:
            names.append(entry.name)
    return sorted(names)


def check_training_output(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` if a training run may write its model there; ``ValueError`` when it is a dataset's registry
    (published versions or a ``latest`` inside) or a published version: a model directory is written by replacing
    the whole directory, which would delete them."""
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        raise ValueError(f"{out_dir} is a published model version: training would replace it; choose another --out")
    if out_dir.is_dir() and (_version_dirs(out_dir) or _champion_name(out_dir / LATEST) is not None):
        raise ValueError(
            f"{out_dir} is a dataset's model registry (published versions inside): training would "
            f"replace it; write into {out_dir / '<name>'} instead"
        )
    return out_dir


# ------------------------------------------------------------------------------------------- flat registry


def _champion_name(link: Path) -> str | None:
    """The version a ``latest`` entry names (symlink or text file), or ``None`` when there is none."""
    if link.is_symlink():
        return Path(os.readlink(link)).name
    if link.is_file():
        return link.read_text(encoding="utf-8").strip() or None
    return None


def migrate_flat_registry(models_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Move a registry of the earlier flat layout (``<version>/`` and ``latest`` directly under ``models_root``)
    into the per-dataset layout; print and return one line per move. A no-op when there is nothing to move.

    Each published version goes to ``<dataset>/<version>``, ``<dataset>`` being the dataset its fingerprint.json
    names; the flat ``latest`` becomes the champion of its version's dataset (unless that dataset already has one)
    and is removed. Versions of other datasets keep no champion: each dataset's next run promotes its own (or
    ``bearing models promote DATASET VERSION``). Unpublished directories (training output) stay where they are.
    Safe against a concurrent migration: whatever another process moved first is skipped.
    """
    root = _root(models_root)
    if not root.is_dir():
        return []
    flat = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and is_complete(p)
    )
    flat_latest = root / LATEST
    if not flat and not (flat_latest.is_symlink() or flat_latest.exists()):
        return []
    champion = _champion_name(flat_latest) if not flat_latest.is_dir() or flat_latest.is_symlink() else None
    lines = []
    for version_dir in flat:
        dataset = str((_read_json(version_dir / FINGERPRINT_FILE) or {}).get("dataset") or "")
        try:
            target = registry_dir(root, dataset) / version_dir.name
        except ValueError:  # no fingerprint, or a name that cannot be a registry's
            target = registry_dir(root, "unknown") / version_dir.name
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(version_dir, target)  # a directory rename: atomic, and refused onto a non-empty target
        except FileNotFoundError:
            continue  # moved by a concurrent migration
        except OSError as exc:
            lines.append(f"registry: cannot move {version_dir} to {target} ({exc}); left in place")
            continue
        lines.append(f"registry: moved {version_dir} -> {target} (one registry per dataset)")
    if champion is not None:
        owner = next((d for d in datasets(root) if is_complete(registry_dir(root, d) / champion)), None)
        if owner is not None and current_champion(root, owner) is None:
            set_latest(root, owner, champion)
            lines.append(f"registry: {registry_dir(root, owner) / LATEST} -> {champion} (was {flat_latest})")
    if not flat_latest.is_dir() or flat_latest.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            flat_latest.unlink()
    for line in lines:
        print(line)
    return lines


# --------------------------------------------------------------------------------------------------- fingerprint


def data_fingerprint(partition_manifest: str | os.PathLike[str]) -> DataFingerprint:
    """The :class:`DataFingerprint` of the partitioning whose manifest is ``partition_manifest``.

    The dataset is the manifest's grand-parent's parent (``<dataset>/clients/<scheme>/manifest.json``); its hash
    covers the same files as the partition's provenance (features, quarantine, dataset.json). The period is the
    min/max timestamp of the client files' rows (timestamp column only is read).
    """
    manifest_path = Path(partition_manifest)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST_FILE
    manifest = load_manifest(manifest_path)
    dataset_dir = manifest_path.parent.parent.parent
    starts, ends = [], []
    for client in manifest.clients:
        stamps = pq.read_table(manifest_path.parent / client.file, columns=["timestamp"]).column("timestamp").to_numpy()
        if len(stamps):
            starts.append(pd.Timestamp(stamps.min()).to_pydatetime())
            ends.append(pd.Timestamp(stamps.max()).to_pydatetime())
    return DataFingerprint(
        dataset=dataset_name(dataset_dir),
        dataset_dir=str(dataset_dir),
        dataset_sha256=sha256_files(dataset_dir / name for name in (FEATURES_FILE, QUARANTINE_FILE, DATASET_FILE)),
        partition_manifest=str(manifest_path),
        partition_manifest_sha256=sha256_file(manifest_path),
        partition_scheme=manifest.scheme,
        num_clients=manifest.num_clients,
        sites=sorted({site for client in manifest.clients for site in client.sites}),
        period_start=min(starts) if starts else None,
        period_end=max(ends) if ends else None,
        train_rows=sum(c.train_rows for c in manifest.clients),
        holdout_rows=sum(c.holdout_rows for c in manifest.clients),
        holdout_mode=manifest.holdout_mode,
    )


def holdout_data(partition_manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """All clients' holdout rows (healthy, never trained on by this partitioning's model): the validation set
    for :func:`promote_if_better`. Columns: the identifying columns and the manifest's input columns."""
    manifest_path = Path(partition_manifest)
    scheme_path = manifest_path if manifest_path.is_dir() else manifest_path.parent
    manifest = load_manifest(scheme_path)
    parts = [read_client(scheme_path, c.client_id, split=SPLIT_HOLDOUT) for c in manifest.clients if c.holdout_rows]
    if not parts:
        raise ValueError(f"{scheme_path}: no client has holdout rows (holdout_fraction=0): nothing to validate on")
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------------------ publish


def _copy_training_output(src: Path, dst: Path) -> None:
    """Copy everything training wrote (model files, metrics, threshold, ...) except the registry's own files."""
    for item in src.iterdir():
        if item.name in _REGISTRY_FILES or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def publish_model(
    trained_dir: str | os.PathLike[str],
    partition_manifest: str | os.PathLike[str] | DataFingerprint,
    *,
    partition_manifest_sha256: str | None = None,
    models_root: str | os.PathLike[str] | None = None,
    version: str | None = None,
) -> VersionInfo:
    """Publish the training output ``trained_dir`` as version ``version`` (default: its directory name) of the
    dataset the partitioning ``partition_manifest`` belongs to: ``models_root/<dataset>/<version>``.

    The version directory gets a copy of everything training wrote (weights, config, scaler, metrics and
    ``threshold.json`` when present) plus ``fingerprint.json``, ``MODEL_CARD.md`` and, last, ``COMPLETE``; it is
    assembled in a staging directory and renamed into place (replacing an unpublished training directory of that
    name, e.g. when training wrote straight into the dataset's registry). On any error the staging directory is
    removed and nothing visible changes.

    ``partition_manifest_sha256``, when given (the hash the training task was keyed on), must match the manifest
    on disk: a manifest rewritten since training would fingerprint the wrong data; a ``threshold.json``
    calibrated for other weights is refused too. A model trained across sites (:mod:`bearing_core.fleet`) has no
    partitioning on the publishing host: its :class:`DataFingerprint` is passed instead of a manifest. Publishing
    the same weights again is a no-op that returns the
    existing version. Work directories and temp files that killed writers left in ``models_root`` more than
    :data:`STALE_AFTER_S` ago are removed first (never read; younger ones may belong to a run in progress).
    """
    trained_dir = Path(trained_dir)
    models_root = _root(models_root)
    migrate_flat_registry(models_root)
    remove_stale_temp_files(models_root, min_age_s=STALE_AFTER_S)
    version = _check_version_name(version or trained_dir.name)
    for name in (CONFIG_FILE, METRICS_FILE):
        if not (trained_dir / name).is_file():
            raise FileNotFoundError(f"cannot publish {trained_dir}: {name} is missing (not a training output)")
    fingerprint = (
        partition_manifest if isinstance(partition_manifest, DataFingerprint) else data_fingerprint(partition_manifest)
    )
    registry = registry_dir(models_root, fingerprint.dataset)
    target = registry / version
    if is_complete(target):
        published = json.loads((target / COMPLETE_FILE).read_text(encoding="utf-8"))
        if published.get("files", {}).get(WEIGHTS_FILE) == sha256_file(trained_dir / WEIGHTS_FILE):
            return version_info(target)
        raise FileExistsError(f"version {version} is already published in {registry} with different weights")
    model = load_model(trained_dir)  # verifies the weights against config.json
    if partition_manifest_sha256 is not None and fingerprint.partition_manifest_sha256 != partition_manifest_sha256:
        raise ValueError(
            f"{fingerprint.partition_manifest}: sha256 {fingerprint.partition_manifest_sha256} differs from the "
            f"{partition_manifest_sha256} the model was trained on (the partitioning was rewritten since)"
        )
    metrics = pd.read_parquet(trained_dir / METRICS_FILE)
    threshold = _read_json(trained_dir / THRESHOLD_FILE)
    weights_sha = sha256_file(trained_dir / WEIGHTS_FILE)
    if threshold is not None and threshold.get("weights_sha256", weights_sha) != weights_sha:
        raise ValueError(f"{trained_dir / THRESHOLD_FILE} was calibrated for other weights: calibrate again")
    created = _now()

    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=registry))
    try:
        _copy_training_output(trained_dir, staging)
        write_json_atomic(staging / FINGERPRINT_FILE, fingerprint.model_dump(mode="json"))
        write_text_atomic(
            staging / MODEL_CARD_FILE, render_model_card(version, created, model, fingerprint, metrics, threshold)
        )
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        write_json_atomic(staging / COMPLETE_FILE, {"version": version, "created": created.isoformat(), "files": files})
        replace_dir(staging, target, kind=MODEL_KIND)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version_info(target)


# ------------------------------------------------------------------------------------------------------- latest


def current_champion(models_root: str | os.PathLike[str] | None, dataset: str) -> str | None:
    """The version ``<dataset>/latest`` names (symlink or, as fallback, text file), or ``None`` when there is none."""
    return _champion_name(registry_dir(models_root, dataset) / LATEST)


def set_latest(models_root: str | os.PathLike[str] | None, dataset: str, version: str) -> Path:
    """Point ``<dataset>/latest`` at ``version`` atomically (relative symlink; text file if symlinks fail)."""
    registry = registry_dir(models_root, dataset)
    if not is_complete(registry / _check_version_name(version)):
        raise FileNotFoundError(f"{registry / version} is not a published version (no {COMPLETE_FILE})")
    link = registry / LATEST
    tmp = registry / f".{LATEST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.symlink(version, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        write_text_atomic(link, version + "\n")
        return link
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return link


# ---------------------------------------------------------------------------------------------------- promotion


def original_units_mse(model: LoadedModel, data: pd.DataFrame | np.ndarray) -> tuple[float, int]:
    """Reconstruction MSE of ``model`` on ``data`` in the original input units, and the number of rows.

    ``data``: a DataFrame holding the model's input columns (selected by name), or an array whose columns are
    already in the model's input order.
    """
    if isinstance(data, pd.DataFrame):
        missing = [c for c in model.input_columns if c not in data.columns]
        if missing:
            features = [c for c in data.columns if c not in META_COLUMNS]
            raise ValueError(
                f"the model's inputs {model.input_columns} are not all among the validation rows' "
                f"columns {features} (missing: {missing}; model {model.path})"
            )
        X = data[model.input_columns].to_numpy(dtype=np.float64)
    else:
        X = np.asarray(data, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"validation data must be a non-empty 2-D table, got shape {X.shape}")
    from bearing_core.training import reconstruction_errors  # torch: only when a model runs

    _, per_input_scaled = reconstruction_errors(model.model, model.scaler.transform(X))
    # error in original units = scaled error x std (the mean cancels out), per column
    return float(np.mean(per_input_scaled * model.scaler.std**2)), int(X.shape[0])


def _layout(version_dir: Path) -> str | None:
    """The input layout recorded with a version (fingerprint.json, else config.json's ``extra``), if any."""
    fingerprint = _read_json(version_dir / FINGERPRINT_FILE) or {}
    extra = (_read_json(version_dir / CONFIG_FILE) or {}).get("extra") or {}
    layout = fingerprint.get(LAYOUT_KEY, extra.get(LAYOUT_KEY))
    return None if layout is None else str(layout)


def _decide(
    registry: Path,
    challenger: LoadedModel,
    champion_version: str | None,
    eval_data: pd.DataFrame | np.ndarray,
    tolerance: float,
) -> dict[str, Any]:
    version = Path(challenger.path or "").name
    base: dict[str, Any] = {"challenger": version, "champion": champion_version, "tolerance": tolerance}
    if champion_version is None:
        mse, rows = original_units_mse(challenger, eval_data)
        return {
            **base,
            "promoted": True,
            "reason": "first model: there is no champion yet",
            "challenger_mse": mse,
            "eval_rows": rows,
        }
    if champion_version == version:
        return {**base, "promoted": True, "reason": "the challenger already is the champion"}
    try:
        champion = load_model(registry / champion_version)
    except (FileNotFoundError, ValueError) as exc:
        return {**base, "promoted": True, "reason": f"the champion cannot be loaded ({exc}); replaced"}
    champion_layout, challenger_layout = _layout(registry / champion_version), _layout(registry / version)
    if champion.input_columns != challenger.input_columns or champion_layout != challenger_layout:
        mse, rows = original_units_mse(challenger, eval_data)
        layouts = f", layout {champion_layout} vs {challenger_layout}" if champion_layout != challenger_layout else ""
        return {
            **base,
            "promoted": True,
            "reason": (
                f"other inputs: the champion's {champion.input_columns} differ from the challenger's "
                f"{challenger.input_columns}{layouts}; the champion cannot score the dataset as it is now, "
                "so the challenger replaces it (not compared)"
            ),
            "challenger_mse": mse,
            "eval_rows": rows,
        }
    challenger_mse, rows = original_units_mse(challenger, eval_data)
    champion_mse, _ = original_units_mse(champion, eval_data)
    limit = champion_mse * (1.0 + tolerance)
    promoted = challenger_mse <= limit
    verdict = "not worse than" if promoted else "worse than"
    return {
        **base,
        "promoted": promoted,
        "reason": (
            f"challenger MSE {challenger_mse:.6g} is {verdict} champion {champion_version}'s {champion_mse:.6g} "
            f"(tolerance {tolerance:.3g}) on the same {rows} validation rows, original units"
        ),
        "challenger_mse": challenger_mse,
        "champion_mse": champion_mse,
        "eval_rows": rows,
    }


def promote_if_better(
    challenger_dir: str | os.PathLike[str],
    eval_data: pd.DataFrame | np.ndarray,
    champion: str | None = None,
    *,
    tolerance: float = 0.0,
    models_root: str | os.PathLike[str] | None = None,
) -> PromotionDecision:
    """Make the published version ``challenger_dir`` (``models_root/<dataset>/<version>``) its dataset's champion
    (``<dataset>/latest``) unless it is worse than that dataset's champion.

    Rules, in order:

    1. no champion yet -> promoted (the first model of a dataset always is);
    2. champion unreadable (files missing, checksum mismatch) -> promoted: a broken champion cannot score;
    3. other inputs (input columns, or recorded ``layout``) -> promoted without comparison: the champion cannot
       score the dataset's current features (e.g. after a change of feature or channel count), so keeping it
       would stop the scoring; ``promotion.json`` says so;
    4. otherwise both are scored on ``eval_data`` (healthy validation rows in original units, e.g.
       :func:`holdout_data` of the challenger's partitioning) and the challenger is promoted iff
       ``challenger_mse <= champion_mse x (1 + tolerance)`` (equal counts as not worse).

    ``champion`` is a version name of the same dataset; default: whatever the dataset's ``latest`` names.
    ``models_root`` defaults to the challenger's registry's parent. The decision is written to the challenger's
    ``promotion.json`` before ``latest`` moves, and returned.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    challenger_dir = Path(challenger_dir).resolve()  # '<dataset>/latest' or a relative path -> the version directory
    registry = challenger_dir.parent
    models_root = Path(models_root) if models_root is not None else registry.parent
    if registry != registry_dir(models_root, registry.name).resolve() or not is_complete(challenger_dir):
        raise ValueError(
            f"{challenger_dir} is not a published version of a dataset registry in {models_root} "
            "(publish_model it first)"
        )
    dataset = registry.name
    challenger = load_model(challenger_dir)
    champion_version = champion if champion is not None else current_champion(models_root, dataset)
    decision = PromotionDecision(
        **_decide(registry, challenger, champion_version, eval_data, tolerance), decided_at=_now()
    )
    write_json_atomic(challenger_dir / PROMOTION_FILE, decision.model_dump(mode="json"))
    if decision.promoted:
        set_latest(models_root, dataset, challenger_dir.name)
    return decision


def promote(
    models_root: str | os.PathLike[str] | None, dataset: str, version: str, reason: str = "manual promotion"
) -> PromotionDecision:
    """Make ``version`` the champion of ``dataset`` unconditionally (an operator's decision), recorded in its
    promotion.json. Only a published version of that dataset can be its champion."""
    models_root = _root(models_root)
    migrate_flat_registry(models_root)
    registry = registry_dir(models_root, dataset)
    target = registry / _check_version_name(version)
    if not is_complete(target):
        elsewhere = [d for d in datasets(models_root) if is_complete(registry_dir(models_root, d) / version)]
        if elsewhere:
            raise FileNotFoundError(
                f"version {version!r} belongs to dataset {elsewhere[0]!r}, not {dataset!r}: "
                "a model is the champion of the dataset it was trained on"
            )
        known = ", ".join(v.version for v in list_versions(models_root, dataset)) or "none"
        raise FileNotFoundError(
            f"no published version {version!r} of dataset {dataset!r} in {registry} (published: {known})"
        )
    decision = PromotionDecision(
        promoted=True,
        reason=reason,
        challenger=version,
        champion=current_champion(models_root, dataset),
        decided_at=_now(),
    )
    write_json_atomic(target / PROMOTION_FILE, decision.model_dump(mode="json"))
    set_latest(models_root, dataset, version)
    return decision


# --------------------------------------------------------------------------------------------- listing, lookup


def version_info(version_dir: str | os.PathLike[str], champion: str | None = None) -> VersionInfo:
    """The :class:`VersionInfo` of a published version directory ``models_root/<dataset>/<version>``
    (``champion``: its dataset's current latest, read when not given)."""
    version_dir = Path(version_dir)
    complete = json.loads((version_dir / COMPLETE_FILE).read_text(encoding="utf-8"))
    config = json.loads((version_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    extra = dict(config.get("extra", {}))
    threshold = _read_json(version_dir / THRESHOLD_FILE) or {}
    eval_mse = extra.get("final_eval_mse")
    if eval_mse is None and (version_dir / METRICS_FILE).is_file():
        metrics = pd.read_parquet(version_dir / METRICS_FILE, columns=["round", "client", "eval_mse"])
        rows = metrics[metrics["client"] == GLOBAL_CLIENT].sort_values("round")
        eval_mse = float(rows["eval_mse"].iloc[-1]) if len(rows) else None
    if champion is None:
        champion = _champion_name(version_dir.parent / LATEST)
    return VersionInfo(
        version=version_dir.name,
        path=version_dir,
        created=datetime.fromisoformat(complete["created"]),
        dataset=version_dir.parent.name,
        strategy=str(extra.get("strategy", "unknown")),
        eval_mse=None if eval_mse is None else float(eval_mse),
        threshold=float(threshold["threshold"]) if isinstance(threshold.get("threshold"), (int, float)) else None,
        is_latest=version_dir.name == champion,
    )


def list_versions(models_root: str | os.PathLike[str] | None = None, dataset: str | None = None) -> list[VersionInfo]:
    """Every published version under ``models_root`` (or of ``dataset`` only), by dataset, oldest first within a
    dataset; unpublished and staging directories are skipped."""
    models_root = _root(models_root)
    migrate_flat_registry(models_root)
    infos = []
    for name in [dataset] if dataset is not None else datasets(models_root):
        registry = registry_dir(models_root, name)
        champion = current_champion(models_root, name)
        versions = [version_info(p, champion) for p in _version_dirs(registry)]
        infos += sorted(versions, key=lambda info: (info.created, info.version))
    return infos


def _published_summary(models_root: Path) -> str:
    by_dataset = [f"{d}: " + ", ".join(v.version for v in list_versions(models_root, d)) for d in datasets(models_root)]
    return "; ".join(by_dataset) or "none"


def resolve_model(
    models_root: str | os.PathLike[str] | None, ref: str | os.PathLike[str], dataset: str | None = None
) -> Path:
    """The model directory ``ref`` designates; the one resolver of every command and flow.

    * ``"latest"``: the champion of ``dataset`` (required), i.e. of the dataset being scored;
    * a version name: that published version, looked up in ``dataset``'s registry first, then in the others;
    * a path: a published version directory (``COMPLETE``) as given, or, explicitly, a model directory outside
      the registry's bookkeeping (``config.json``, ``weights.pt``, ``scaler.json``: e.g. what ``bearing train
      --out DIR`` wrote). Hidden directories (a writer's staging or set-aside directory) are refused.

    Names only ever resolve to published, complete versions: there is no fallback to "some directory holding
    weights". Errors say what exists instead.
    """
    models_root = _root(models_root)
    migrate_flat_registry(models_root)
    ref_str = os.fspath(ref)
    if ref_str == LATEST:
        if dataset is None:
            raise ValueError(
                f"'{LATEST}' is the champion of a dataset: name the dataset "
                f"(registries: {', '.join(datasets(models_root)) or 'none'})"
            )
        registry = registry_dir(models_root, dataset)
        champion = current_champion(models_root, dataset)
        if champion is None:
            raise FileNotFoundError(
                f"no champion for dataset {dataset!r} in {registry}: nothing has been promoted to '{LATEST}' yet "
                f"(run the pipeline on it, or bearing models promote {dataset} VERSION; published: "
                f"{_published_summary(models_root)})"
            )
        if not is_complete(registry / champion):
            raise FileNotFoundError(f"{registry / LATEST} names {champion!r}, which is not a published version")
        return (registry / champion).resolve()
    if _VERSION_RE.fullmatch(ref_str):
        names = ([dataset] if dataset is not None else []) + datasets(models_root)
        for name in names:
            if is_complete(registry_dir(models_root, name) / ref_str):
                return (registry_dir(models_root, name) / ref_str).resolve()
    path = Path(ref_str)
    if path.is_dir():
        if is_complete(path):
            return path.resolve()
        if path.resolve().name.startswith("."):
            raise FileNotFoundError(f"{path} is a registry work directory (hidden, possibly half-written), not a model")
        missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, SCALER_FILE) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a model directory: {', '.join(missing)} missing")
        return path.resolve()
    hint = (
        f"; the champion is per dataset: --model {LATEST} scores with the dataset's own "
        f"({models_root}/<dataset>/{LATEST})"
        if path.name == LATEST
        else ""
    )
    raise FileNotFoundError(
        f"no model {ref_str!r}: not a published version in {models_root} "
        f"(published: {_published_summary(models_root)}), nor a directory{hint}"
    )
