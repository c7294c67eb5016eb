"""The pipeline's parameters: one typed model for the Prefect form, the deployments and ``bearing run``.

:class:`PipelineParams` groups every setting of the pipeline into sections (:class:`DataParams`,
:class:`FederatedParams`, :class:`ThresholdParams` and the alarm rule, :class:`~bearing_core.alarms.AlarmConfig`),
each field with a title, a description, its bounds and, for a choice, the list of choices. Prefect renders a flow
parameter typed as one of these sections as a group of the "Custom run" form; ``cli/run_cmd.py`` generates the
``bearing run`` flags from the same fields (see :func:`flag_name`); ``prefect.yaml`` lists only overrides.

Defaults live here (for the pipeline) or in the config they come from: a field copied from
:class:`~bearing_core.federated.config.FederatedConfig`, :class:`~bearing_core.inputs.InputConfig`,
:class:`~bearing_core.per_bearing.PerBearingConfig` or :class:`~bearing_core.config.IngestConfig` keeps its
description and bounds (and its default, unless the pipeline's differs: a per-bearing model with a bounded code,
calibrated on the maximum of the healthy period).

:func:`check_params` validates a parameter mapping (the form's JSON, a deployment's parameters or the CLI's flags)
and the raw directory before any step runs; :func:`error_line` turns a validation error into one sentence naming
the setting and, for a choice, the valid values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from bearing_core.alarms import AlarmConfig
from bearing_core.config import IngestConfig
from bearing_core.features import FEATURES
from bearing_core.federated.config import STRATEGIES, FederatedConfig
from bearing_core.healthy import HealthyPolicy, HealthyPolicyName
from bearing_core.inputs import InputConfig
from bearing_core.per_bearing import PerBearingConfig
from bearing_core.threshold import PIPELINE_MARGIN

Feature = Literal[FEATURES]  # type: ignore[valid-type]  # the feature names, in FEATURES order
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
Layout = Literal["per_bearing", "snapshot"]
Partition = Literal["natural", "iid", "quantity", "dirichlet"]
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"per_bearing": (4, 1, 4), "snapshot": (4, 2, 4)}
"""Autoencoder widths when ``hidden`` is empty: 1-4 inputs a bearing, or every channel of a snapshot."""


def _like(model: type[BaseModel], name: str, **changes: Any) -> Any:
    """The field ``name`` of ``model`` (description, bounds, default), with ``changes`` (a title, the pipeline's
    default): one definition of a setting wherever it appears."""
    return FieldInfo.merge_field_infos(model.model_fields[name], **changes)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """Where the data is, which feature the model sees, the healthy period and the model rows' layout."""

    raw_dir: str = Field(
        "data/raw/demo",
        min_length=1,
        title="Raw data directory",
        description="Raw IMS files, one sub-folder per site (or files at its top). A ground_truth.json in it (the "
        "demo data's) turns on detection evaluation",
    )
    out_dir: str = Field(
        "", title="Processed dataset directory", description="Empty: data/processed/(name of the raw directory)"
    )
    follow_symlinks: bool = _like(
        IngestConfig,
        "follow_symlinks",
        title="Follow symbolic links",
        description="Follow symbolic links in the raw directory (e.g. a DVC-managed folder); each link is resolved "
        "once and its target recorded in the manifest. Off: links are quarantined",
    )
    workers: int = Field(0, ge=0, title="Ingest workers", description="Ingest worker processes; 0 = all cores")
    feature: Feature = _like(
        InputConfig, "feature", title="Feature", description="Per-channel feature used as model input"
    )
    train_fraction: float = _like(
        InputConfig,
        "train_fraction",
        title="Healthy fraction",
        description="The earliest fraction of each site's snapshots is the healthy (training) period",
    )
    train_until: datetime | None = _like(
        InputConfig,
        "train_until",
        title="Healthy until",
        description="Alternatively, the end of the healthy period (UTC) for every site; replaces the healthy fraction",
    )
    holdout_mode: Literal["last", "interleaved"] = _like(InputConfig, "holdout_mode", title="Calibration rows")
    healthy: HealthyPolicyName = Field(
        "first-fraction",
        title="Healthy-period policy",
        description="'first-fraction': the earliest healthy fraction of each site (with 'Healthy until' set: up to "
        "that time); 'until': up to 'Healthy until'; 'rolling': each bearing's rows the champion scored normal, in "
        "the last window, a guard band before its first uncleared alarm (no champion yet: first-fraction, logged)",
    )
    healthy_guard_h: float = _like(HealthyPolicy, "guard_h", title="Guard band, hours (rolling)")
    healthy_window_days: float = _like(HealthyPolicy, "window_days", title="Window, days (rolling)")
    layout: Layout = Field(
        "per_bearing",
        title="Model rows",
        description="'per_bearing': one row per snapshot and bearing, each bearing's inputs standardised by its own "
        "healthy rows (ln levels), alarms name the bearing; 'snapshot': one row per snapshot with every channel",
    )
    relative_inputs: Literal["off", "add", "only"] = _like(
        PerBearingConfig,
        "relative",
        title="Inputs relative to the rig (per_bearing)",
    )
    min_level_std: float = _like(
        PerBearingConfig,
        "min_std",
        default=0.1,
        title="Floor of a bearing's level std (per_bearing)",
        description="Floor of a bearing's healthy std of ln level: deviations are measured in units of at least this "
        "relative change (a few hours of healthy data understate how much a healthy bearing moves over weeks)",
    )

    def input_config(self) -> InputConfig:
        """The model inputs and healthy period (``train_until``, when set, replaces ``train_fraction``)."""
        return InputConfig(
            feature=self.feature,
            train_until=self.train_until,
            train_fraction=None if self.train_until is not None else self.train_fraction,
            holdout_mode=self.holdout_mode,
        )

    @model_validator(mode="after")
    def _policy_matches_the_period(self) -> DataParams:
        if self.healthy == "until" and self.train_until is None:
            raise ValueError("healthy 'until' needs train_until (the end of the healthy period)")
        if self.healthy == "rolling" and self.train_until is not None:
            raise ValueError("healthy 'rolling' takes no train_until (it chooses the rows itself)")
        return self

    def healthy_policy(self) -> HealthyPolicy:
        """The healthy-period policy (``first-fraction`` with ``train_until`` set is ``until``)."""
        policy = "until" if self.train_until is not None else self.healthy
        return HealthyPolicy(policy=policy, guard_h=self.healthy_guard_h, window_days=self.healthy_window_days)

    def per_bearing_config(self) -> PerBearingConfig:
        return PerBearingConfig(
            features=(self.feature,), log=True, relative=self.relative_inputs, min_std=self.min_level_std
        )


class FederatedParams(_Section):
    """How the healthy rows are split into clients and how the federation trains the autoencoder."""

    partition: Partition = Field(
        "natural",
        title="Partition",
        description="How the healthy period is split into clients: 'natural' = one client per site (the number of "
        "clients comes from the data), 'iid', 'quantity' (skewed sizes) or 'dirichlet' (skewed content)",
    )
    clients: int = Field(4, ge=1, title="Clients", description="Number of clients for iid, quantity and dirichlet")
    alpha: float = Field(
        0.5,
        gt=0,
        title="Dirichlet alpha (dirichlet)",
        description="Dirichlet concentration: smaller = more skewed clients",
    )
    strategy: Strategy = _like(FederatedConfig, "strategy", title="Aggregation strategy")
    rounds: int = _like(FederatedConfig, "rounds", title="Rounds")
    local_epochs: int = _like(FederatedConfig, "local_epochs", title="Local epochs")
    max_local_steps: int = _like(FederatedConfig, "max_local_steps", title="Most local steps a round (0: no cap)")
    lr: float = _like(FederatedConfig, "lr", title="Learning rate")
    batch_size: int = _like(FederatedConfig, "batch_size", title="Batch size")
    hidden: tuple[int, ...] = Field(
        (),
        title="Hidden layer widths",
        description="Autoencoder hidden layer widths, e.g. 4,1,4; empty: 4,1,4 per bearing, 4,2,4 per snapshot",
    )
    activation: Literal["tanh", "elu", "relu"] = _like(
        FederatedConfig,
        "activation",
        default="tanh",
        title="Activation",
        description="Hidden activation; tanh bounds the code, so the model cannot reconstruct levels far outside "
        "the healthy range",
    )
    proximal_mu: float = _like(FederatedConfig, "proximal_mu", title="FedProx mu (fedprox)")
    seed: int = _like(FederatedConfig, "seed", title="Seed")
    min_fit_fraction: float = _like(FederatedConfig, "min_fit_fraction", title="Replies needed per round")
    round_timeout_s: float = _like(FederatedConfig, "round_timeout_s", title="Round timeout (seconds)")
    patience: int = _like(FederatedConfig, "patience", title="Early-stopping patience (rounds)")
    min_improvement: float = _like(FederatedConfig, "min_improvement", title="Early stopping: minimum improvement")
    clipping_norm: float = _like(FederatedConfig, "clipping_norm", title="Clipping norm (update L2 bound)")
    dp_noise_multiplier: float = _like(
        FederatedConfig,
        "dp_noise_multiplier",
        title="Differential privacy: noise multiplier",
        description="Central differential privacy: Gaussian noise of std this x the clipping norm / clients on every "
        "aggregate; the privacy budget (epsilon at delta) is in the model card. 0: off; needs a clipping norm > 0",
    )
    warm_start: bool = Field(
        False,
        title="Warm start",
        description="Start from the champion's weights when its inputs and architecture match (measured on the "
        "demo: worse holdout MSE, not faster; off)",
    )
    centralized_baseline: bool = Field(
        True,
        title="Centralized baseline",
        description="Also train the centralized baseline on the pooled rows (the cost of federation, in the report); "
        "off for the nightly deployment",
    )

    @field_validator("hidden")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 for width in value):
            raise ValueError(f"hidden layer widths must be positive, got {','.join(map(str, value))}")
        return value

    @model_validator(mode="after")
    def _privacy_needs_a_clipping_norm(self) -> FederatedParams:
        if self.dp_noise_multiplier > 0 and self.clipping_norm <= 0:
            raise ValueError(
                f"differential privacy (noise multiplier {self.dp_noise_multiplier:g}) needs a clipping norm > 0: "
                "the noise is scaled by it"
            )
        return self

    def widths(self, layout: str) -> tuple[int, ...]:
        """``hidden``, or the layout's default widths."""
        return self.hidden or DEFAULT_HIDDEN[layout]


class ThresholdParams(_Section):
    """How the alarm threshold is calibrated on the healthy period (federated, from the clients' sketches)."""

    method: Literal["max", "quantile", "mean_kstd"] = _like(
        FederatedConfig,
        "threshold_method",
        default="max",
        title="Method",
        description="'max': the largest value of the alarm statistic over the healthy period, so the pipeline never "
        "alarms on the data it calls healthy; 'quantile' or 'mean_kstd' of it",
    )
    quantile: float = _like(FederatedConfig, "threshold_quantile", default=0.99, title="Quantile (quantile)")
    k: float = _like(FederatedConfig, "threshold_k", title="k (mean_kstd)")
    margin: float = _like(
        FederatedConfig,
        "threshold_margin",
        default=PIPELINE_MARGIN,
        title="Margin (std)",
        description="How far (in healthy standard deviations of the inputs) a bearing must go beyond what its "
        "healthy period sustained before it counts as over the threshold: threshold = (sqrt(t) + margin)^2",
    )


class PipelineParams(_Section):
    """Every setting of one pipeline run; each section is one parameter of the flow (one group of the form)."""

    # each section's title is here only: Prefect's form shows it (via :func:`form_title`), so do `bearing run
    # --help`'s groups; a model title equal to it would make pydantic drop it from the flow's parameter schema
    data: DataParams = Field(default_factory=DataParams, title="Data")
    federated: FederatedParams = Field(default_factory=FederatedParams, title="Federated training")
    threshold: ThresholdParams = Field(default_factory=ThresholdParams, title="Alarm threshold")
    alarms: AlarmConfig = Field(default_factory=AlarmConfig, title="Alarm rule")
    lock_timeout_s: float = Field(
        3600.0,
        ge=0,
        allow_inf_nan=False,
        title="Lock timeout (seconds)",
        description="How long to wait for another run on the same dataset to finish before failing",
    )

    def federated_config(self) -> FederatedConfig:
        """The training configuration (the client count of 'natural' is set from the data by the train flow)."""
        fed = self.federated
        return FederatedConfig(
            strategy=fed.strategy,
            rounds=fed.rounds,
            local_epochs=fed.local_epochs,
            max_local_steps=fed.max_local_steps,
            lr=fed.lr,
            batch_size=fed.batch_size,
            proximal_mu=fed.proximal_mu,
            seed=fed.seed,
            num_clients=fed.clients,
            hidden=fed.widths(self.data.layout),
            activation=fed.activation,
            min_fit_fraction=fed.min_fit_fraction,
            round_timeout_s=fed.round_timeout_s,
            patience=fed.patience,
            min_improvement=fed.min_improvement,
            clipping_norm=fed.clipping_norm,
            dp_noise_multiplier=fed.dp_noise_multiplier,
            threshold_method=self.threshold.method,
            threshold_quantile=self.threshold.quantile,
            threshold_k=self.threshold.k,
            threshold_margin=self.threshold.margin,
        )


SECTIONS: tuple[str, ...] = ("data", "federated", "threshold", "alarms")
"""The sections of :class:`PipelineParams`, in form order; ``lock_timeout_s`` is a plain top-level field."""
FLAG_PREFIX: dict[str, str] = {"data": "", "federated": "", "threshold": "threshold_", "alarms": "alarm_"}
"""A section's fields are named ``<prefix><field>`` outside it (flags, messages): ``threshold_quantile``."""


def section_model(section: str) -> type[BaseModel]:
    return PipelineParams.model_fields[section].annotation  # type: ignore[return-value]


def form_title(name: str) -> FieldInfo:
    """Metadata that gives the flow parameter ``name`` (a field of :class:`PipelineParams`) that field's title in
    Prefect's form: ``Annotated[DataParams, form_title("data")]``. Prefect titles every flow parameter with its
    Python name ("data", "lock_timeout_s") unless the parameter's annotation says otherwise."""
    return Field(json_schema_extra={"title": PipelineParams.model_fields[name].title})


def flag_name(loc: tuple[Any, ...]) -> str:
    """The flat name of the setting at ``loc`` (a pydantic error location or ``(section, field)``):
    ``('threshold', 'quantile')`` -> ``threshold_quantile``; ``('data', 'feature')`` -> ``feature``."""
    parts = [str(part) for part in loc]
    if len(parts) >= 2 and parts[0] in FLAG_PREFIX:
        return FLAG_PREFIX[parts[0]] + parts[1]
    return ".".join(parts)


def settings() -> list[tuple[str, str, str, FieldInfo]]:
    """Every setting as ``(flat name, section or '', field, FieldInfo)``, in form order (the CLI's flags)."""
    out: list[tuple[str, str, str, FieldInfo]] = []
    for section, field in PipelineParams.model_fields.items():
        if section in SECTIONS:
            out.extend(
                (FLAG_PREFIX[section] + name, section, name, info)
                for name, info in section_model(section).model_fields.items()
            )
        else:
            out.append((section, "", section, field))
    return out


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Settings by flat name (``{"rounds": 2, "threshold_quantile": 0.9}``, as flags or tests give them) -> the
    flow's parameters (``{"federated": {"rounds": 2}, "threshold": {"quantile": 0.9}}``); unknown names:
    :class:`ParameterError`."""
    where = {key: (section, name) for key, section, name, _ in settings()}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in where:
            raise ParameterError(f"unknown parameter {key}: not a setting of the pipeline")
        section, name = where[key]
        if section:
            out.setdefault(section, {})[name] = value
        else:
            out[name] = value
    return out


def choices(info: FieldInfo) -> tuple[str, ...]:
    """The valid values of a choice field (a ``Literal``), else ()."""
    args = get_args(info.annotation)
    return tuple(str(a) for a in args) if args and all(isinstance(a, str) for a in args) else ()


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def error_line(
    exc: ValidationError, name: Callable[[str], str] = str, key: Callable[[tuple[Any, ...]], str] = flag_name
) -> str:
    """One sentence for the first error of ``exc``: ``feature 'rsm' is not one of: mean_abs, rms, ...``,
    ``threshold_quantile must be < 1, got 1.5``. ``key`` gives a location's flat name, ``name`` renders it (the
    CLI: as its flag)."""
    error = exc.errors()[0]
    loc = tuple(error.get("loc", ()))
    label = name(key(loc)) if loc else "parameters"
    value = error.get("input")
    kind = error["type"]
    if kind == "literal_error":  # ctx: "'a', 'b' or 'c'"
        options = str(error["ctx"]["expected"]).replace(" or ", ", ").replace("'", "")
        return f"{label} {value!r} is not one of: {options}"
    if kind in _BOUNDS:
        bound, op = _BOUNDS[kind]
        return f"{label} must be {op} {error['ctx'][bound]:g}, got {value}"
    if kind == "extra_forbidden":
        return f"unknown parameter {'.'.join(map(str, loc))}: not a setting of the pipeline"
    message = str(error["msg"])
    if kind == "value_error" and len(loc) == 1 and loc[0] in FLAG_PREFIX:  # a section's own check: names its fields
        return message.removeprefix("Value error, ")
    if kind == "value_error":  # our validators' messages name the value already
        return f"{label}: {message.removeprefix('Value error, ')}"
    return f"{label}: {message}" + ("" if isinstance(value, Mapping) or value is None else f", got {value!r}")


class ParameterError(ValueError):
    """A pipeline parameter (or the raw directory) is not usable; the message is one sentence."""


def check_params(values: Mapping[str, Any], name: Callable[[str], str] = str) -> PipelineParams:
    """``values`` (sections as models or mappings, as the flow or the form gives them) as :class:`PipelineParams`,
    checked with the raw directory and the training configuration; :class:`ParameterError` with one line if not."""
    try:
        params = PipelineParams.model_validate(dict(values))
        params.data.input_config()
        params.federated_config()
    except ValidationError as exc:
        raise ParameterError(error_line(exc, name)) from None
    raw_dir = Path(params.data.raw_dir)
    if not raw_dir.is_dir():
        what = "is not a directory" if raw_dir.exists() else "does not exist"
        raise ParameterError(f"{name('raw_dir')} {params.data.raw_dir} {what}")
    return params
