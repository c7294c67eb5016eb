"""The pipeline's typed parameters (bearing_core/params.py): the Prefect form they render as, the checks that run
before the first step, and the `bearing run` flags generated from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.prefect_runs import NIGHTLY_OVERRIDES, project_under_harness
from prefect.utilities.callables import parameter_schema

from bearing_core.alarms import AlarmConfig
from bearing_core.features import FEATURES
from bearing_core.federated.config import STRATEGIES, FederatedConfig
from bearing_core.params import ParameterError, PipelineParams, check_params, nested, settings

REPO = Path(__file__).resolve().parents[1]
FEATURE_LIST = ", ".join(FEATURES)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The parameter schema Prefect builds for pipeline_flow (what the deployment stores and the form renders)."""
    from flows.pipeline import pipeline_flow

    return parameter_schema(pipeline_flow.fn).model_dump_for_openapi()


def definition(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    return schema["definitions"][prop["$ref"].rsplit("/", 1)[1]]


# ---- the form --------------------------------------------------------------------------------------------------


def test_the_form_has_one_group_per_section_with_titles_and_descriptions(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    assert list(props) == ["data", "federated", "threshold", "alarms", "lock_timeout_s"]
    # the headings the form shows: each parameter's own title (Prefect would title it with its Python name)
    titles = {name: props[name].get("title") for name in ("data", "federated", "threshold", "alarms")}
    assert titles == {
        "data": "Data",
        "federated": "Federated training",
        "threshold": "Alarm threshold",
        "alarms": "Alarm rule",
    }
    assert not schema.get("required")
    for section in titles:
        group = definition(schema, props[section])
        assert props[section]["description"]  # the group's subtitle
        assert group["additionalProperties"] is False  # a misspelt setting is an error, not ignored
        for name, field in group["properties"].items():
            assert field["title"] != name and field.get("description"), (section, name)  # readable labels
            assert "default" in field, (section, name)
            assert "<" not in field["description"], (section, name)  # markdown would swallow <name>
        # the group's default is the section's defaults: the form starts filled in
        assert props[section]["default"] == {n: f["default"] for n, f in group["properties"].items()}


def test_choices_are_enums_and_limits_are_bounds(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    data = definition(schema, props["data"])["properties"]
    fed = definition(schema, props["federated"])["properties"]
    thr = definition(schema, props["threshold"])["properties"]
    alarms = definition(schema, props["alarms"])["properties"]
    assert data["feature"]["enum"] == list(FEATURES) and data["feature"]["default"] == "mean_abs"
    assert data["layout"]["enum"] == ["per_bearing", "snapshot"]
    assert fed["strategy"]["enum"] == list(STRATEGIES)
    assert fed["partition"]["enum"] == ["natural", "iid", "quantity", "dirichlet"]
    assert thr["method"]["enum"] == ["max", "quantile", "mean_kstd"]
    assert thr["quantile"]["exclusiveMinimum"] == 0 and thr["quantile"]["exclusiveMaximum"] == 1
    assert thr["k"]["exclusiveMinimum"] == 0
    assert fed["rounds"]["minimum"] == 1 and fed["clients"]["minimum"] == 1 and fed["local_epochs"]["minimum"] == 1
    assert fed["lr"]["exclusiveMinimum"] == 0 and fed["min_fit_fraction"]["maximum"] == 1
    assert data["train_fraction"]["exclusiveMinimum"] == 0 and data["train_fraction"]["maximum"] == 1
    assert alarms["fraction"]["maximum"] == 1 and alarms["warmup_h"]["minimum"] == 0
    # the settings the pipeline could not set before
    assert {"activation", "min_fit_fraction", "round_timeout_s"} <= set(fed)


def test_no_str_or_none_toggles_but_the_healthy_period_end(schema: dict[str, Any]) -> None:
    """A nullable field shows a type toggle in the form; only `train_until` (a time or nothing) needs one."""
    nullable = []
    for section in ("data", "federated", "threshold", "alarms"):
        for name, field in definition(schema, schema["properties"][section])["properties"].items():
            if any(option.get("type") == "null" for option in field.get("anyOf", ())):
                nullable.append(name)
    assert nullable == ["train_until"]


def test_the_form_rejects_out_of_range_values_and_unknown_choices(schema: dict[str, Any]) -> None:
    """What the Prefect server checks a Custom run's parameters with (enforce_parameter_schema)."""
    from prefect.utilities.schema_tools import ValidationError, validate

    validate({"threshold": {"quantile": 0.9}, "data": {"feature": "rms"}}, schema, raise_on_error=True)
    for bad in ({"threshold": {"quantile": 1.5}}, {"data": {"feature": "rsm"}}, {"federated": {"rounds": 0}}):
        with pytest.raises(ValidationError):
            validate(bad, schema, raise_on_error=True)


# ---- one source of the defaults --------------------------------------------------------------------------------


def test_defaults_are_the_pipelines_previous_ones() -> None:
    """`bearing run --raw-dir X` trains what it trained before the parameters were typed (same values)."""
    params = PipelineParams()
    assert params.data.input_config().model_dump() == {
        "mode": "features",
        "feature": "mean_abs",
        "columns": None,
        "train_until": None,
        "train_fraction": 0.2,
        "holdout_fraction": 0.2,
        "holdout_mode": "last",
        "scale": True,
    }
    assert params.data.per_bearing_config().model_dump() == {
        "features": ("mean_abs",),
        "log": True,
        "min_std": 0.1,
        "relative": "off",
    }
    assert (params.data.raw_dir, params.data.out_dir, params.data.layout, params.data.workers) == (
        "data/raw/demo",
        "",
        "per_bearing",
        0,
    )
    assert params.federated_config() == FederatedConfig(
        strategy="fedavg",
        rounds=20,
        local_epochs=10,
        lr=1e-2,
        batch_size=32,
        proximal_mu=0.01,
        seed=0,
        num_clients=4,
        hidden=(4, 1, 4),
        activation="tanh",
        min_fit_fraction=0.5,
        round_timeout_s=600.0,
        threshold_method="max",
        threshold_quantile=0.99,
        threshold_k=3.0,
        threshold_margin=0.5,
    )
    assert (params.federated.partition, params.federated.alpha) == ("natural", 0.5)
    assert params.alarms == AlarmConfig() and params.lock_timeout_s == 3600.0
    snapshot = check_params(nested({"raw_dir": str(REPO), "layout": "snapshot"}))
    assert snapshot.federated_config().hidden == (4, 2, 4)


def test_deployments_list_only_overrides_and_they_validate() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pipelines = [d for d in spec["deployments"] if d["entrypoint"] == "flows/pipeline.py:pipeline_flow"]
    assert {d["name"] for d in pipelines} == {"nightly-retrain", "manual-pipeline"}
    for deployment in pipelines:
        parameters = deployment["parameters"]
        assert set(parameters) <= set(PipelineParams.model_fields)
        # overrides of the defaults by the defaults' own values, but for the nightly retrain's own (issue 17)
        overrides = NIGHTLY_OVERRIDES if deployment["name"] == "nightly-retrain" else {}
        expected = PipelineParams.model_validate(overrides) if overrides else PipelineParams()
        assert PipelineParams.model_validate(parameters) == expected, deployment["name"]


# ---- checked before the first step, in one line -----------------------------------------------------------------

BAD = [
    ({"feature": "rsm"}, f"feature 'rsm' is not one of: {FEATURE_LIST}"),
    ({"threshold_quantile": 1.5}, "threshold_quantile must be < 1, got 1.5"),
    ({"raw_dir": "raw/dmeo"}, "raw_dir raw/dmeo does not exist"),
    ({"rounds": 0}, "rounds must be >= 1, got 0"),
    ({"strategy": "fedsgd"}, f"strategy 'fedsgd' is not one of: {', '.join(STRATEGIES)}"),
    ({"alarm_warmup_h": -1.5}, "alarm_warmup_h must be >= 0, got -1.5"),
    ({"hidden": [4, 0, 4]}, "hidden: hidden layer widths must be positive, got 4,0,4"),
]


@pytest.mark.parametrize(("flat", "message"), BAD)
def test_bad_settings_are_one_sentence(
    flat: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw" / "demo").mkdir(parents=True)
    with pytest.raises(ParameterError) as caught:
        check_params(nested({"raw_dir": "raw/demo", **flat}))
    assert str(caught.value) == message


def test_differential_privacy_is_a_pipeline_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.9: the noise multiplier and clipping norm reach the training configuration; noise without a
    clipping norm is one sentence, before anything runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw" / "demo").mkdir(parents=True)
    params = check_params(nested({"raw_dir": "raw/demo", "dp_noise_multiplier": 0.3, "clipping_norm": 2.0}))
    cfg = params.federated_config()
    assert (cfg.dp_noise_multiplier, cfg.clipping_norm) == (0.3, 2.0)
    with pytest.raises(ParameterError) as caught:
        check_params(nested({"raw_dir": "raw/demo", "dp_noise_multiplier": 0.3}))
    assert str(caught.value) == (
        "differential privacy (noise multiplier 0.3) needs a clipping norm > 0: the noise is scaled by it"
    )


def test_an_unknown_setting_is_named() -> None:
    with pytest.raises(ParameterError, match=r"^unknown parameter data\.rwa_dir: not a setting of the pipeline$"):
        check_params({"data": {"rwa_dir": "x"}})
    with pytest.raises(ParameterError, match=r"^unknown parameter mu: not a setting of the pipeline$"):
        nested({"mu": 0.1})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny demo (1 site x 4 files) in a project directory (the cwd), under a Prefect test harness."""
    from prefect.logging.configuration import setup_logging

    from bearing_core.synthetic import generate_demo

    setup_logging(incremental=False)  # Prefect's console handler on this stderr, not a closed one of an earlier test
    root = tmp_path_factory.mktemp("project")
    generate_demo(root / "raw" / "demo", sites=1, files_per_site=4, seed=1, workers=1)
    with project_under_harness(root):
        yield root


@pytest.mark.parametrize(("flat", "message"), [BAD[0], BAD[1], BAD[2]])
@pytest.mark.integration
def test_the_flow_run_fails_before_ingest_with_one_line(project: Path, flat: dict[str, Any], message: str) -> None:
    from helpers.prefect_runs import task_run_states

    from flows.pipeline import pipeline_flow

    state = pipeline_flow(**nested({"raw_dir": "raw/demo", "workers": 1, **flat}), return_state=True)
    assert state.is_failed()
    assert state.message == message  # the flow run's state message in the UI
    assert task_run_states(state.state_details.flow_run_id) == {}  # no step ran
    assert not (project / "data").exists()  # nothing ingested


# ---- the CLI -----------------------------------------------------------------------------------------------------


def test_bearing_run_flags_are_generated_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for key, *_ in settings():
        assert f"--{key.replace('_', '-')}" in text, key
    for group in ("Data:", "Federated training:", "Alarm threshold:", "Alarm rule:"):
        assert group in text
    assert "{" + ",".join(FEATURES) + "}" in text
    assert "--mu " not in text and "--warmup-hours" not in text  # older spellings are accepted, not shown


@pytest.mark.parametrize(("flat", "message"), BAD)
def test_bearing_run_gives_the_same_sentence_and_exit_2(
    flat: dict[str, Any],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw" / "demo").mkdir(parents=True)
    ((key, value),) = flat.items()
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    assert main(["run", "--raw-dir", "raw/demo", f"--{key.replace('_', '-')}", text]) == 2
    err = capsys.readouterr().err
    flag = f"--{key.replace('_', '-')}"
    assert err.splitlines() == [f"bearing run: error: {message.replace(key, flag, 1)}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_older_flag_spellings_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import build_parser
    from cli.run_cmd import pipeline_params

    monkeypatch.chdir(REPO)
    args = build_parser().parse_args(
        [
            "run",
            "--raw-dir",
            ".",
            "--mu",
            "0.5",
            "--holdout",
            "interleaved",
            "--warmup-hours",
            "2",
            "--persistence-hours",
            "1",
            "--relative",
            "add",
            "--lock-timeout",
            "5",
            "--out",
            "x",
        ]
    )
    params = pipeline_params(args)
    assert params.federated.proximal_mu == 0.5 and params.data.holdout_mode == "interleaved"
    assert params.alarms == AlarmConfig(warmup_h=2, persistence_h=1)
    assert (params.data.relative_inputs, params.lock_timeout_s, params.data.out_dir) == ("add", 5, "x")
