"""Saving and loading a trained model directory: everything needed to score new data, nothing else.

Layout of a model directory::

    weights.pt    the state_dict (torch.save; loaded with weights_only=True, so no pickled code runs)
    config.json   {"format_version", "model": ModelConfig, "input_columns": [...], "weights_sha256", "extra": {...}}
    scaler.json   Scaler.to_dict()

The directory is written as a whole: files go into a hidden staging directory beside the target, which is then
renamed into place, so a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bearing_core.fingerprint import sha256_file
from bearing_core.io import atomic_path, replace_dir, write_json_atomic
from bearing_core.scaling import Scaler

if TYPE_CHECKING:  # torch is imported where weights are saved or loaded: code that only needs the file names
    # (pipelines whose steps are all cached, the CLI's config checks) does not pay ~1 s of torch import
    from bearing_core.autoencoder import Autoencoder, ModelConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
SCALER_FILE = "scaler.json"
METRICS_FILE = "metrics.parquet"
"""Per-round metrics that training writes into the model directory."""
GLOBAL_CLIENT = "global"
"""``client`` of the weighted federated rows of ``metrics.parquet`` (one per round)."""
CENTRALIZED_CLIENT = "centralized"
"""``client`` of the centralized baseline's rows of ``metrics.parquet``."""
MODEL_KIND = "model"
"""Kind of output (:data:`bearing_core.io.OUTPUT_MARKER`) of a model directory: only a model replaces a model."""


@dataclass
class LoadedModel:
    """A model read back by :func:`load_model` (already in eval mode)."""

    model: Autoencoder
    model_cfg: ModelConfig
    scaler: Scaler
    input_columns: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_model(
    out_dir: str | os.PathLike[str],
    model: Autoencoder,
    model_cfg: ModelConfig,
    scaler: Scaler,
    input_columns: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory ``out_dir`` atomically (an existing model is replaced) and return its path.

    ``out_dir`` must be absent, empty or an earlier model (:class:`bearing_core.io.OutputDirRefused` otherwise).

    ``extra`` is free JSON metadata (training config, metrics, threshold, data fingerprints...).
    """
    out_dir = Path(out_dir)
    if len(input_columns) != model_cfg.n_inputs or scaler.n_features != model_cfg.n_inputs:
        raise ValueError(
            f"model has {model_cfg.n_inputs} inputs but {len(input_columns)} input columns "
            f"and a scaler of width {scaler.n_features}"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        with atomic_path(staging / WEIGHTS_FILE) as tmp, open(tmp, "wb") as fh:
            # to a file object, not a path: torch names the archive's inner folder after a path's (random) temp
            # name, so identical weights would get different bytes and SHA-256s from run to run
            import torch

            torch.save(model.state_dict(), fh)
        write_json_atomic(staging / SCALER_FILE, scaler.to_dict())
        write_json_atomic(
            staging / CONFIG_FILE,
            {
                "format_version": FORMAT_VERSION,
                "model": model_cfg.model_dump(mode="json"),
                "input_columns": list(input_columns),
                "weights_sha256": sha256_file(staging / WEIGHTS_FILE),
                "extra": extra or {},
            },
        )
        replace_dir(staging, out_dir, kind=MODEL_KIND)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def parameter_count(n_inputs: int, hidden: tuple[int, ...] | list[int]) -> int:
    """Weights + biases of the autoencoder ``n_inputs → hidden... → n_inputs`` (plain integers: no allocation)."""
    widths = [n_inputs, *hidden, n_inputs]
    return sum(w_in * w_out + w_out for w_in, w_out in zip(widths[:-1], widths[1:]))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(model_dir: str | os.PathLike[str]) -> LoadedModel:
    """Read a directory written by :func:`save_model`; the weights' checksum is verified.

    Everything is checked before anything is allocated: config.json's keys, the model configuration, that its
    input width matches the input columns and the scaler, and that ``weights.pt`` is large enough to hold the
    model's float32 parameters (a config.json with absurd widths fails here, not in a huge allocation). The
    weights are read with ``weights_only=True`` (no pickled code runs). Any problem is one ``ValueError`` line
    naming the file (pydantic's ``ValidationError``, a ``ValueError`` too, for an invalid model configuration).
    """
    model_dir = Path(model_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, SCALER_FILE):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"not a model directory: {model_dir / name} is missing")
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    missing = [key for key in ("model", "input_columns", "weights_sha256") if key not in config]
    if missing:
        raise ValueError(f"{config_path}: missing {', '.join(missing)}")
    actual = sha256_file(weights_path)
    if actual != config["weights_sha256"]:
        raise ValueError(f"{weights_path}: sha256 {actual} does not match config.json")
    from bearing_core.autoencoder import ModelConfig

    model_cfg = ModelConfig.model_validate(config["model"])
    input_columns = config["input_columns"]
    if not isinstance(input_columns, list) or len(input_columns) != model_cfg.n_inputs:
        raise ValueError(f"{config_path}: input_columns must list the model's {model_cfg.n_inputs} inputs")
    scaler = Scaler.from_dict(json.loads((model_dir / SCALER_FILE).read_text(encoding="utf-8")))
    if scaler.n_features != model_cfg.n_inputs:
        raise ValueError(f"{model_dir / SCALER_FILE}: width {scaler.n_features}, the model has {model_cfg.n_inputs}")
    n_params = parameter_count(model_cfg.n_inputs, model_cfg.hidden)
    if 4 * n_params > weights_path.stat().st_size:
        raise ValueError(
            f"{config_path}: the model has {n_params:,} parameters but {weights_path.name} holds "
            f"{weights_path.stat().st_size:,} bytes (at most {weights_path.stat().st_size // 4:,} float32 values)"
        )
    import torch

    from bearing_core.autoencoder import Autoencoder

    try:
        state = torch.load(weights_path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - UnpicklingError (refused content), RuntimeError (not a torch file) ...
        raise ValueError(f"{weights_path}: not a plain state_dict, refused to load ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights_path}: not a state_dict of tensors")
    model = Autoencoder(model_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path} does not fit {config_path.name}'s model ({_first_line(exc)})") from None
    model.eval()
    return LoadedModel(
        model=model,
        model_cfg=model_cfg,
        scaler=scaler,
        input_columns=list(input_columns),
        extra=dict(config.get("extra", {})),
        path=model_dir,
    )
