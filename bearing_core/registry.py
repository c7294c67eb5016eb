"""Model registry: versioned model directories, the ``latest`` champion and champion/challenger promotion.

Layout under ``models_root`` (:attr:`bearing_core.config.DataPaths.models_root`, default ``data/models``)::

    <version>/weights.pt, config.json, scaler.json   the model (bearing_core.model_io)
    <version>/metrics.parquet                        per-round metrics (clients, global, centralized)
    <version>/threshold.json                         alarm threshold, when calibrated before publishing
    <version>/fingerprint.json                       DataFingerprint: dataset + partition manifest hashes
    <version>/MODEL_CARD.md                          human-readable card (bearing_core.model_card)
    <version>/COMPLETE                               commit marker: version, creation time, sha256 of every file
    <version>/promotion.json                         the promotion decision (written by promote_if_better)
    latest -> <version>                              the champion (relative symlink)

**Atomic publication.** :func:`publish_model` assembles a version in a hidden staging directory beside its target
(``.<version>.staging-*``), writes ``COMPLETE`` last, then renames the directory into place. A reader therefore
never sees a half-written version, and only directories holding ``COMPLETE`` count as versions: the raw output
of a training run in ``models_root`` (no ``COMPLETE`` yet) is not listed, not resolvable, not promotable. Hidden
directories (a staging directory left by a killed publisher) are ignored and may be deleted at any time.

**The champion.** ``latest`` is a relative symlink swapped atomically (a new symlink under a temporary name, then
``os.replace`` onto ``latest``), so it always names one whole version. Where symlinks are unavailable (some
Windows or network filesystems), ``latest`` is instead a small text file holding the version name, also replaced
atomically; every reader here accepts both forms.

**Promotion.** :func:`promote_if_better` evaluates challenger and champion on the *same* healthy validation rows,
each through its own scaler, and compares the reconstruction MSE **in the original input units**
(``mean((scaler⁻¹(model(scaler(x))) − x)²)``). Each model's scaled-space MSE is not comparable across models:
the same reconstruction, measured in units of a larger training std, looks smaller. In original units both models
are held to one yardstick whatever their scalers. (All default inputs are the same feature of every channel, so
no column dominates by its unit.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.config import DataPaths
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.inputs import DATASET_FILE, FEATURES_FILE, QUARANTINE_FILE
from bearing_core.io import remove_stale_temp_files, replace_dir, write_json_atomic, write_text_atomic
from bearing_core.model_card import GLOBAL_CLIENT, DataFingerprint, render_model_card
from bearing_core.model_io import (
    CONFIG_FILE,
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


class VersionInfo(BaseModel):
    """One published version, as listed by :func:`list_versions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(..., description="Directory name under models_root")
    path: Path = Field(..., description="The version directory")
    created: datetime = Field(..., description="When it was published (UTC)")
    dataset: str = Field(..., description="Dataset it was trained on")
    strategy: str = Field(..., description="Federated strategy (or 'unknown')")
    eval_mse: float | None = Field(None, description="Final global holdout MSE of training (standardised units)")
    threshold: float | None = Field(None, description="Alarm threshold from threshold.json, if calibrated")
    is_latest: bool = Field(False, description="True for the champion that 'latest' points to")


class PromotionDecision(BaseModel):
    """Outcome of a champion/challenger comparison (also saved as the challenger's ``promotion.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promoted: bool = Field(..., description="True when the challenger is now 'latest'")
    reason: str = Field(..., description="Why, in one sentence")
    challenger: str = Field(..., description="Challenger version")
    champion: str | None = Field(None, description="Champion version at decision time (None if there was none)")
    challenger_mse: float | None = Field(None, description="Challenger's reconstruction MSE, original units")
    champion_mse: float | None = Field(None, description="Champion's reconstruction MSE on the same rows")
    tolerance: float = Field(0.0, description="Relative tolerance: promoted if challenger <= champion x (1 + tol)")
    eval_rows: int = Field(0, ge=0, description="Validation rows both models were scored on")
    decided_at: datetime = Field(..., description="Decision time (UTC)")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _check_version_name(version: str) -> str:
    if not _VERSION_RE.match(version) or version == LATEST:
        raise ValueError(f"invalid version name {version!r}: letters, digits, '_', '-', '.'; not '{LATEST}'")
    return version


def is_complete(version_dir: str | os.PathLike[str]) -> bool:
    """True when ``version_dir`` is a fully published version (it holds the ``COMPLETE`` marker)."""
    return (Path(version_dir) / COMPLETE_FILE).is_file()


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
        dataset=dataset_dir.resolve().name,
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
    partition_manifest: str | os.PathLike[str],
    *,
    partition_manifest_sha256: str | None = None,
    models_root: str | os.PathLike[str] | None = None,
    version: str | None = None,
) -> VersionInfo:
    """Publish the training output ``trained_dir`` as version ``version`` (default: its directory name).

    The version directory gets a copy of everything training wrote (weights, config, scaler, metrics and
    ``threshold.json`` when present) plus ``fingerprint.json``, ``MODEL_CARD.md`` and, last, ``COMPLETE``; it is
    assembled in a staging directory and renamed into ``models_root/<version>`` (replacing an unpublished
    training directory of that name, e.g. when training wrote straight into ``models_root``). On any error the
    staging directory is removed and nothing visible changes.

    ``partition_manifest_sha256``, when given (the hash the training task was keyed on), must match the manifest
    on disk: a manifest rewritten since training would fingerprint the wrong data; a ``threshold.json``
    calibrated for other weights is refused too. Publishing the same weights again is a no-op that returns the
    existing version. Work directories and temp files that killed writers left in ``models_root`` more than
    :data:`STALE_AFTER_S` ago are removed first (never read; younger ones may belong to a run in progress).
    """
    trained_dir = Path(trained_dir)
    models_root = Path(models_root) if models_root is not None else DataPaths().models_root
    remove_stale_temp_files(models_root, min_age_s=STALE_AFTER_S)
    version = _check_version_name(version or trained_dir.name)
    target = models_root / version
    for name in (CONFIG_FILE, METRICS_FILE):
        if not (trained_dir / name).is_file():
            raise FileNotFoundError(f"cannot publish {trained_dir}: {name} is missing (not a training output)")
    if is_complete(target):
        published = json.loads((target / COMPLETE_FILE).read_text(encoding="utf-8"))
        if published.get("files", {}).get(WEIGHTS_FILE) == sha256_file(trained_dir / WEIGHTS_FILE):
            return version_info(target)
        raise FileExistsError(f"version {version} is already published in {models_root} with different weights")
    model = load_model(trained_dir)  # verifies the weights against config.json
    fingerprint = data_fingerprint(partition_manifest)
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

    models_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=models_root))
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


def current_champion(models_root: str | os.PathLike[str]) -> str | None:
    """The version ``latest`` names (symlink or, as fallback, text file), or ``None`` when there is none."""
    link = Path(models_root) / LATEST
    if link.is_symlink():
        return Path(os.readlink(link)).name
    if link.is_file():
        return link.read_text(encoding="utf-8").strip() or None
    return None


def set_latest(models_root: str | os.PathLike[str], version: str) -> Path:
    """Point ``models_root/latest`` at ``version`` atomically (relative symlink; text file if symlinks fail)."""
    models_root = Path(models_root)
    if not is_complete(models_root / _check_version_name(version)):
        raise FileNotFoundError(f"{models_root / version} is not a published version (no {COMPLETE_FILE})")
    link = models_root / LATEST
    tmp = models_root / f".{LATEST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
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
            raise ValueError(f"validation data lacks input columns {missing} of model {model.path}")
        X = data[model.input_columns].to_numpy(dtype=np.float64)
    else:
        X = np.asarray(data, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"validation data must be a non-empty 2-D table, got shape {X.shape}")
    from bearing_core.training import reconstruction_errors  # torch: only when a model runs

    _, per_input_scaled = reconstruction_errors(model.model, model.scaler.transform(X))
    # error in original units = scaled error x std (the mean cancels out), per column
    return float(np.mean(per_input_scaled * model.scaler.std**2)), int(X.shape[0])


def _decide(
    models_root: Path,
    challenger: LoadedModel,
    champion_version: str | None,
    eval_data: pd.DataFrame | np.ndarray,
    tolerance: float,
) -> dict[str, Any]:
    version = Path(challenger.path or "").name
    base: dict[str, Any] = {"challenger": version, "champion": champion_version, "tolerance": tolerance}
    if champion_version is None:
        mse, rows = original_units_mse(challenger, eval_data)
        return {**base, "promoted": True, "reason": "first model: there is no champion yet",
                "challenger_mse": mse, "eval_rows": rows}
    if champion_version == version:
        return {**base, "promoted": True, "reason": "the challenger already is the champion"}
    try:
        champion = load_model(models_root / champion_version)
    except (FileNotFoundError, ValueError) as exc:
        return {**base, "promoted": True, "reason": f"the champion cannot be loaded ({exc}); replaced"}
    if champion.input_columns != challenger.input_columns:
        return {
            **base,
            "promoted": False,
            "reason": (
                f"not comparable: the champion's inputs {champion.input_columns} differ from the challenger's "
                f"{challenger.input_columns}; champion kept (promote manually: bearing models promote {version})"
            ),
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
    """Make the published version ``challenger_dir`` the champion (``latest``) unless it is worse.

    Rules, in order:

    1. no champion yet -> promoted (the first model always is);
    2. champion unreadable (files missing, checksum mismatch) -> promoted: a broken champion cannot score;
    3. different input columns -> the models cannot be compared on the same rows -> **not** promoted, the
       champion is kept; switching inputs is a deliberate change, done with :func:`promote` (``bearing models
       promote VERSION``);
    4. otherwise both are scored on ``eval_data`` (healthy validation rows in original units, e.g.
       :func:`holdout_data` of the challenger's partitioning) and the challenger is promoted iff
       ``challenger_mse <= champion_mse x (1 + tolerance)`` (equal counts as not worse).

    ``champion`` is a version name; default: whatever ``latest`` names. ``models_root`` defaults to the
    challenger's parent directory. The decision is written to the challenger's ``promotion.json`` before
    ``latest`` moves, and returned.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    challenger_dir = Path(challenger_dir).resolve()  # 'latest' or a relative path -> the version directory
    models_root = Path(models_root) if models_root is not None else challenger_dir.parent
    if challenger_dir.parent != models_root.resolve() or not is_complete(challenger_dir):
        raise ValueError(f"{challenger_dir} is not a published version of {models_root} (publish_model it first)")
    challenger = load_model(challenger_dir)
    champion_version = champion if champion is not None else current_champion(models_root)
    decision = PromotionDecision(
        **_decide(models_root, challenger, champion_version, eval_data, tolerance), decided_at=_now()
    )
    write_json_atomic(challenger_dir / PROMOTION_FILE, decision.model_dump(mode="json"))
    if decision.promoted:
        set_latest(models_root, challenger_dir.name)
    return decision


def promote(models_root: str | os.PathLike[str], version: str, reason: str = "manual promotion") -> PromotionDecision:
    """Make ``version`` the champion unconditionally (an operator's decision), recorded in its promotion.json."""
    models_root = Path(models_root)
    target = models_root / _check_version_name(version)
    if not is_complete(target):
        known = ", ".join(v.version for v in list_versions(models_root)) or "none"
        raise FileNotFoundError(f"no published version {version!r} in {models_root} (published: {known})")
    decision = PromotionDecision(
        promoted=True, reason=reason, challenger=version, champion=current_champion(models_root), decided_at=_now()
    )
    write_json_atomic(target / PROMOTION_FILE, decision.model_dump(mode="json"))
    set_latest(models_root, version)
    return decision


# --------------------------------------------------------------------------------------------- listing, lookup


def version_info(version_dir: str | os.PathLike[str], champion: str | None = None) -> VersionInfo:
    """The :class:`VersionInfo` of a published version directory (``champion``: the current latest's name)."""
    version_dir = Path(version_dir)
    complete = json.loads((version_dir / COMPLETE_FILE).read_text(encoding="utf-8"))
    config = json.loads((version_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    extra = dict(config.get("extra", {}))
    fingerprint = _read_json(version_dir / FINGERPRINT_FILE) or {}
    threshold = _read_json(version_dir / THRESHOLD_FILE) or {}
    eval_mse = extra.get("final_eval_mse")
    if eval_mse is None and (version_dir / METRICS_FILE).is_file():
        metrics = pd.read_parquet(version_dir / METRICS_FILE, columns=["round", "client", "eval_mse"])
        rows = metrics[metrics["client"] == GLOBAL_CLIENT].sort_values("round")
        eval_mse = float(rows["eval_mse"].iloc[-1]) if len(rows) else None
    if champion is None:
        champion = current_champion(version_dir.parent)
    return VersionInfo(
        version=version_dir.name,
        path=version_dir,
        created=datetime.fromisoformat(complete["created"]),
        dataset=str(fingerprint.get("dataset", "unknown")),
        strategy=str(extra.get("strategy", "unknown")),
        eval_mse=None if eval_mse is None else float(eval_mse),
        threshold=float(threshold["threshold"]) if isinstance(threshold.get("threshold"), (int, float)) else None,
        is_latest=version_dir.name == champion,
    )


def list_versions(models_root: str | os.PathLike[str] | None = None) -> list[VersionInfo]:
    """Every published version under ``models_root``, oldest first (unpublished or staging dirs are skipped)."""
    models_root = Path(models_root) if models_root is not None else DataPaths().models_root
    if not models_root.is_dir():
        return []
    champion = current_champion(models_root)
    infos = [
        version_info(p, champion)
        for p in models_root.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and is_complete(p)
    ]
    return sorted(infos, key=lambda info: (info.created, info.version))


def resolve_model(models_root: str | os.PathLike[str] | None, ref: str | os.PathLike[str]) -> Path:
    """The model directory ``ref`` designates: ``"latest"`` (the champion), a version name, or a path.

    Versions must be published (``COMPLETE``); a path outside the registry must at least be a model directory
    (``config.json``, ``weights.pt``, ``scaler.json``). Errors say what exists instead.
    """
    models_root = Path(models_root) if models_root is not None else DataPaths().models_root
    ref_str = os.fspath(ref)
    if ref_str == LATEST:
        champion = current_champion(models_root)
        if champion is None:
            raise FileNotFoundError(f"no champion in {models_root}: nothing has been promoted to '{LATEST}' yet")
        if not is_complete(models_root / champion):
            raise FileNotFoundError(f"{models_root / LATEST} names {champion!r}, which is not a published version")
        return (models_root / champion).resolve()
    if _VERSION_RE.match(ref_str) and is_complete(models_root / ref_str):
        return (models_root / ref_str).resolve()
    path = Path(ref_str)
    if path.is_dir():
        missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, SCALER_FILE) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a model directory: {', '.join(missing)} missing")
        return path.resolve()
    known = ", ".join(v.version for v in list_versions(models_root)) or "none"
    raise FileNotFoundError(f"no model {ref_str!r}: not a published version of {models_root} (published: {known}), "
                            "nor a directory")

