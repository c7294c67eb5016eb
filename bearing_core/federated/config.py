"""Typed configuration of one federated training run.

The same :class:`FederatedConfig` drives both runtimes: the in-process simulation (``run_federated``) hands it to
the ServerApp directly; a deployment (``flwr run`` against a SuperLink) carries it in the Flower *run config*, a
flat ``{str: int | float | str | bool}`` mapping (``[tool.flwr.app.config]`` + ``--run-config`` overrides).
:meth:`FederatedConfig.to_run_config` / :meth:`FederatedConfig.from_run_config` convert between the two, so a
setting has one name and one default wherever it is set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bearing_core.config import HiddenWidths

if TYPE_CHECKING:  # bearing_core.threshold imports pandas and pyarrow: keep this module light for `bearing --help`
    from bearing_core.threshold import ThresholdConfig
    from bearing_core.training import TrainConfig

#: Strategy name -> class name in ``flwr.serverapp.strategy``. Order = order shown in errors and ``--help``.
STRATEGY_CLASSES: dict[str, str] = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "krum": "Krum",
}
STRATEGIES: tuple[str, ...] = tuple(STRATEGY_CLASSES)


def check_strategy(name: str) -> str:
    """``name`` lower-cased if it is a known strategy, else ``ValueError`` with one line listing the choices."""
    key = name.strip().lower()
    if key not in STRATEGY_CLASSES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return key


FaultMode = Literal["raise", "sleep", "nan", "scale", "sketch"]
FAULTS_KEY = "faults"
SCALE_ATTACK_FACTOR = 1e6
"""Mode 'scale': the client multiplies its trained weights by this factor ..."""
SCALE_ATTACK_ROWS = 1_000_000_000
"""... and claims this many training rows (``num-examples``), so that plain FedAvg gives it almost all the weight."""
SKETCH_ATTACK_ERROR = 1e6
"""Mode 'sketch': every holdout error in the client's calibration sketch is replaced by this value."""
_FAULT_SPEC = re.compile(
    r"\s*(\d+)@(\d+):(raise|sleep|nan|scale|sketch)(?::(\d+(?:\.\d*)?(?:e[+-]?\d+)?))?\s*", re.IGNORECASE
)


class FaultInjection(BaseModel):
    """Make one client fail on purpose in one round (chaos testing of the fault-tolerance path).

    Modes: ``raise`` (the ClientApp raises: an error reply), ``sleep`` (it stalls ``sleep_s`` before training, so
    its reply misses a shorter round timeout) and ``nan`` (it trains, then replies weights containing NaN: a
    diverged or corrupted update, which the server must reject rather than average). Two poisoning attacks, which
    the server's screening must bound (see :mod:`bearing_core.federated.strategies`): ``scale`` (it trains, then
    replies weights x :data:`SCALE_ATTACK_FACTOR` and claims :data:`SCALE_ATTACK_ROWS` rows) and ``sketch`` (its
    calibration sketch claims every holdout error is :data:`SKETCH_ATTACK_ERROR`; calibration follows the last
    round, so ``round`` does not matter for this mode).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition_id: int = Field(..., ge=0, description="Client (partition id) that fails")
    round: int = Field(1, ge=1, description="Server round in which it fails (its train step)")
    mode: FaultMode = Field(
        "raise",
        description="'raise': the ClientApp raises; 'sleep': it stalls for sleep_s before replying; "
        "'nan': it replies weights containing NaN; 'scale': weights x1e6 and a claimed 1e9 rows; "
        "'sketch': a calibration sketch of errors 1e6",
    )
    sleep_s: float = Field(30.0, ge=0, description="Stall duration for mode 'sleep' (exceed round_timeout_s)")

    def to_config(self) -> dict[str, int | float | str]:
        """As flat ``fault-*`` keys (run config, and the train config the server sends to clients)."""
        return {f"fault-{name.replace('_', '-')}": value for name, value in self.model_dump().items()}

    def spec(self) -> str:
        """Compact text form ``PID@ROUND:MODE[:SLEEP_S]`` (e.g. ``7@1:nan``, ``8@1:sleep:30.0``), see :meth:`parse`.

        The duration is written for mode 'sleep' and whenever it differs from the default (exact round trip).
        """
        text = f"{self.partition_id}@{self.round}:{self.mode}"
        default = type(self).model_fields["sleep_s"].default
        return f"{text}:{self.sleep_s!r}" if self.mode == "sleep" or self.sleep_s != default else text

    @classmethod
    def parse(cls, spec: str) -> FaultInjection:
        """Inverse of :meth:`spec`; ``ValueError`` naming the bad spec and the expected form."""
        match = _FAULT_SPEC.fullmatch(spec)
        if match is None:
            raise ValueError(
                f"bad fault spec {spec!r}: expected PID@ROUND:MODE[:SLEEP_S], MODE raise|sleep|nan|scale|sketch"
            )
        pid, server_round, mode, sleep_s = match.groups()
        extra = {} if sleep_s is None else {"sleep_s": float(sleep_s)}
        return cls(partition_id=int(pid), round=int(server_round), mode=mode.lower(), **extra)

    @classmethod
    def all_from_config(cls, config: Mapping[str, Any]) -> tuple[FaultInjection, ...]:
        """Every injection a train config carries: the flat ``fault-*`` keys and the ``faults`` specs."""
        found: list[FaultInjection] = []
        if "fault-partition-id" in config:
            found.append(
                cls(
                    **{
                        key.removeprefix("fault-").replace("-", "_"): v
                        for key, v in config.items()
                        if key.startswith("fault-")
                    }
                )
            )
        found.extend(parse_fault_specs(str(config.get(FAULTS_KEY, ""))))
        return tuple(found)


def parse_fault_specs(text: str) -> tuple[FaultInjection, ...]:
    """``"3@1:raise,8@1:sleep:30"`` -> injections (empty text: none)."""
    return tuple(FaultInjection.parse(spec) for spec in text.split(",") if spec.strip())


class FederatedConfig(BaseModel):
    """One federated run: strategy, rounds, local training, model shape and fault tolerance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str = Field("fedavg", description=f"Aggregation strategy, one of {', '.join(STRATEGIES)}")
    rounds: int = Field(
        20, ge=1, description="Federated rounds (train + evaluate on every sampled client); with patience > 0 a maximum"
    )
    patience: int = Field(
        0,
        ge=0,
        description="Early stopping: stop once the federated holdout MSE has not improved by min_improvement for "
        "this many rounds in a row (the weights of the last round run are kept); 0 = run every round",
    )
    min_improvement: float = Field(
        0.01, ge=0, lt=1, description="Relative decrease of the best holdout MSE so far that counts as an improvement"
    )
    warm_start: str = Field(
        "",
        description="Model directory (e.g. the champion) whose weights start round 1 when its input columns and "
        "architecture equal this run's (fine-tuning); otherwise, or empty, training starts from the seed's weights",
    )
    local_epochs: int = Field(10, ge=1, description="Epochs each client trains on its own rows per round")
    max_local_steps: int = Field(
        0,
        ge=0,
        description="At most this many mini-batch steps a client trains per round (and the centralized baseline "
        "per round), so a round costs the same on a day of data and on a month; 0 = every local epoch in full",
    )
    lr: float = Field(1e-2, gt=0, description="Client learning rate (Adam)")
    batch_size: int = Field(32, ge=1, description="Client mini-batch size")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal term weight (used by 'fedprox' only)")
    server_lr: float = Field(1e-2, gt=0, description="Server learning rate eta (used by 'fedadam' only)")
    trim_beta: float = Field(0.2, ge=0, lt=0.5, description="Fraction cut at each end ('fedtrimmedavg' only)")
    hidden: HiddenWidths = Field((4, 2, 4), min_length=1, description="Autoencoder hidden layer widths")
    activation: Literal["relu", "tanh", "elu"] = Field(
        "elu", description="Autoencoder hidden activation (ELU: ReLU units can die on small feature datasets)"
    )
    scale: bool = Field(True, description="Standardise inputs with the federated mean/std (else identity scaling)")
    seed: int = Field(0, ge=0, description="Seeds model initialisation, client shuffling and client sampling")
    num_clients: int = Field(2, ge=1, description="Clients (SuperNodes) expected in the federation")
    fraction_train: float = Field(1.0, gt=0, le=1, description="Fraction of connected clients sampled per round")
    min_available_fraction: float = Field(
        1.0, gt=0, le=1, description="Fraction of num_clients that must be connected before a round starts"
    )
    min_fit_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of the sampled clients whose replies must succeed for a round to count; "
        "failed or late replies are logged and left out of the aggregate",
    )
    round_timeout_s: float = Field(600.0, gt=0, description="Seconds the server waits for replies in each step")
    threshold_method: Literal["quantile", "mean_kstd", "max"] = Field(
        "quantile", description="Federated threshold calibration: 'quantile' or 'mean_kstd' of healthy holdout errors"
    )
    threshold_quantile: float = Field(0.995, gt=0, lt=1, description="Quantile q for threshold_method 'quantile'")
    threshold_k: float = Field(3.0, gt=0, description="k for threshold_method 'mean_kstd' (mean + k·std)")
    threshold_margin: float = Field(
        0.0, ge=0, le=100, description="Threshold margin in units of the inputs' healthy std: (sqrt(t) + margin)^2"
    )
    calibrate_persistence_h: float = Field(
        0.0,
        ge=0,
        description="Calibrate on the alarm rule's statistic over this persistence (hours), on every healthy "
        "row (train and holdout): the level at least calibrate_fraction of a site's snapshots in the window exceed; "
        "0 = on single holdout snapshots",
    )
    calibrate_fraction: float = Field(1.0, gt=0, le=1, description="Fraction of the alarm rule (with persistence)")
    calibrate_warmup_h: float = Field(0.0, ge=0, description="Warm-up of the alarm rule: its rows do not calibrate")
    outlier_factor: float = Field(
        10.0,
        ge=0,
        description="Robust screening of what clients report, relative to the median over the clients (3 or more): "
        "updates (delta from the global model) with a norm above factor x the round's median are rejected (or "
        "clipped, see norm_action); row counts above factor x the median (no manifest) or above what the client "
        "reported before round 1 are capped; scaler moments and calibration sketches outside the sites' plausible "
        "range are rejected. 0 disables it (the manifest check stays on when a manifest is given)",
    )
    norm_action: Literal["reject", "clip"] = Field(
        "reject", description="What happens to an update above the norm bound: left out, or scaled down onto it"
    )
    manifest: str = Field(
        "",
        description="Partition manifest (manifest.json) known to the server: self-reported train / holdout row "
        "counts are capped at its rows per client. Empty: capped at outlier_factor x the median count",
    )
    clipping_norm: float = Field(
        0.0,
        ge=0,
        description="Absolute bound on every client update's L2 norm (delta from the global model): larger ones "
        "are scaled onto it, also the clipping norm of differential privacy. 0: no absolute bound",
    )
    dp_noise_multiplier: float = Field(
        0.0,
        ge=0,
        description="Central differential privacy (Flower's server-side fixed clipping at clipping_norm): Gaussian "
        "noise of std dp_noise_multiplier x clipping_norm / sampled clients added to every aggregate. 0: off",
    )
    fault: FaultInjection | None = Field(
        None, description="Deliberate client failure, for testing (flat fault-* keys in the run config)"
    )
    faults: tuple[FaultInjection, ...] = Field(
        (),
        description="Further deliberate failures (several clients / modes), for testing; in the run config one "
        "'faults' key of comma-separated specs PID@ROUND:MODE[:SLEEP_S]",
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return check_strategy(value)

    @field_validator("outlier_factor")
    @classmethod
    def _outlier_factor_above_one(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError(f"outlier_factor must be 0 (off) or above 1, got {value:g}")
        return value

    @field_validator("faults", mode="before")
    @classmethod
    def _fault_specs(cls, value: Any) -> Any:
        return parse_fault_specs(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_fault_per_client_round(self) -> FederatedConfig:
        seen: set[tuple[int, int]] = set()
        for fault in self.fault_injections:
            key = (fault.partition_id, fault.round)
            if key in seen:
                raise ValueError(f"two fault injections for client {key[0]} in round {key[1]}: keep one")
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _privacy_needs_a_clipping_norm(self) -> FederatedConfig:
        if self.dp_noise_multiplier > 0 and self.clipping_norm <= 0:
            raise ValueError("dp_noise_multiplier > 0 needs clipping_norm > 0 (the noise is scaled by it)")
        return self

    @property
    def fault_injections(self) -> tuple[FaultInjection, ...]:
        """Every deliberate failure of the run: ``fault`` (if set), then ``faults``."""
        return ((self.fault,) if self.fault is not None else ()) + self.faults

    def fault_config(self) -> dict[str, int | float | str]:
        """Fault-injection keys of the run config and of the train config sent to clients (none: empty)."""
        out: dict[str, int | float | str] = {} if self.fault is None else dict(self.fault.to_config())
        if self.faults:
            out[FAULTS_KEY] = ",".join(fault.spec() for fault in self.faults)
        return out

    def threshold_config(self) -> ThresholdConfig:
        """The :class:`~bearing_core.threshold.ThresholdConfig` of the federated calibration step."""
        from bearing_core.threshold import ThresholdConfig

        return ThresholdConfig(
            method=self.threshold_method,
            quantile=self.threshold_quantile,
            k=self.threshold_k,
            margin=self.threshold_margin,
        )

    @property
    def min_available_clients(self) -> int:
        """Clients that must be connected before the server samples (at least 1)."""
        return max(1, math.ceil(self.min_available_fraction * self.num_clients))

    def min_successful(self, sampled: int) -> int:
        """Successful replies needed out of ``sampled`` for a step to count (at least 1)."""
        return max(1, math.ceil(self.min_fit_fraction * sampled))

    def train_config(self) -> TrainConfig:
        """The local training settings of a round (a client's, and a round of the centralized baseline)."""
        from bearing_core.training import TrainConfig  # torch: only where training happens

        return TrainConfig(
            lr=self.lr,
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            seed=self.seed,
            max_steps=self.max_local_steps,
        )

    def to_run_config(self) -> dict[str, int | float | str | bool]:
        """Flat Flower run config (kebab-case keys; tuples as comma-separated strings; no fault = no keys)."""
        out: dict[str, int | float | str | bool] = {}
        for name, value in self.model_dump(exclude={"fault", "faults"}).items():
            key = name.replace("_", "-")
            out[key] = ",".join(str(v) for v in value) if isinstance(value, tuple | list) else value
        out.update(self.fault_config())
        return out

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederatedConfig:
        """Inverse of :meth:`to_run_config`; keys this model does not know (e.g. ``out-dir``) are ignored."""
        fields: dict[str, Any] = {}
        fault: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name.startswith("fault_"):
                fault[name.removeprefix("fault_")] = value
            elif name in cls.model_fields:
                fields[name] = value
        if isinstance(fields.get("hidden"), str):
            fields["hidden"] = tuple(int(width) for width in fields["hidden"].split(",") if width.strip())
        if fault:
            fields["fault"] = FaultInjection(**fault)
        return cls(**fields)


class SimulationResources(BaseModel):
    """How a simulation runs its virtual clients: ``workers`` ClientApp calls at once, in threads of this process.

    The runtime is :mod:`bearing_core.federated.backend` (no Ray: it opens no socket). 100 clients run through
    the 2 default workers in turn; a client stalling past the round timeout holds one worker until it returns, so
    keep at least 2.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(2, ge=1, le=32, description="ClientApp calls run at once (threads of the training process)")
