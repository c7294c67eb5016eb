"""Bad input to the `bearing` command: one line on stderr (`bearing <cmd>: error: ...`) and exit 2, never a
traceback; names coming from data are printed escaped, so control characters cannot forge console lines."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FILES = (
    "2003.10.22.12.06.24",
    "2003.10.22.12.09.13",
    "2003.10.22.12.14.13",
    "2003.10.22.12.19.13",
    "2003.10.22.12.29.13",
    "2003.10.22.12.39.13",
)


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bearing {command}: error: "), err
    assert "Traceback" not in err and "validation error" not in err
    return lines[0]


def write_table(path: Path, columns: dict[str, list[Any]]) -> Path:
    header = ",".join(["file", *columns])
    rows = [",".join([f, *(str(v[i]) for v in columns.values())]) for i, f in enumerate(FILES)]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A features-only dataset (import-features) of one site, channels B1..B4."""
    from bearing_core.features_import import import_features

    rng = np.random.default_rng(0)
    table = write_table(
        tmp_path / "rig_mean_abs.csv", {f"B{i}": list(rng.uniform(0.05, 0.1, len(FILES))) for i in range(1, 5)}
    )
    import_features(table, tmp_path / "dataset")
    return tmp_path / "dataset"


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A saved (untrained) 4 -> 4,2,4 -> 4 model with its scaler."""
    from bearing_core.autoencoder import Autoencoder, ModelConfig
    from bearing_core.model_io import save_model
    from bearing_core.scaling import Scaler

    cfg = ModelConfig(n_inputs=4, hidden=(4, 2, 4))
    scaler = Scaler(mean=np.zeros(4), std=np.ones(4))
    return save_model(tmp_path / "model", Autoencoder(cfg), cfg, scaler, [f"B{i}_mean_abs" for i in range(1, 5)])


def rewrite_config(model_dir: Path, **changes: Any) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---- import-features -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[1, 2, 3, 4, 5, 6], ["2003-10-22"] * 6])
def test_import_features_refuses_a_timestamp_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: list[Any]
) -> None:
    from cli.main import main

    table = write_table(tmp_path / "t.csv", {"B1": [0.1] * 6, "timestamp": values})
    assert main(["import-features", str(table), "--out", str(tmp_path / "out")]) == 2
    assert "column 'timestamp' is reserved" in one_error_line(capsys, "import-features")
    assert not (tmp_path / "out").exists()


def test_import_features_prints_a_site_name_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    table = write_table(tmp_path / "t.csv", {"B1": [0.1] * 6})
    assert (
        main(["import-features", str(table), "--out", str(tmp_path / "out"), "--site", "a\nscores: forged\x1b[2K"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\x1b" not in out
    assert "site a\\nscores: forged\\x1b[2K (" in out


# ---- loading a model (bearing score) -------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_score_refuses_crafted_weights_in_one_line(
    dataset: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from cli.main import main

    marker = tmp_path / "pwned"
    torch.save({"net.0.weight": _Payload(marker)}, model_dir / "weights.pt")  # checksum made to match below
    rewrite_config(model_dir, weights_sha256=hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest())
    assert main(["score", str(dataset), "--model", str(model_dir)]) == 2
    line = one_error_line(capsys, "score")
    assert "weights.pt: not a plain state_dict, refused to load" in line
    assert not marker.exists()


def test_a_config_with_absurd_widths_is_refused_before_allocating(
    dataset: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bearing_core.model_io import load_model, parameter_count
    from cli.main import main

    rewrite_config(model_dir, model={"n_inputs": 4, "hidden": [10**9], "activation": "relu"})
    assert main(["score", str(dataset), "--model", str(model_dir)]) == 2
    assert "the model has 9,000,000,004 parameters but weights.pt holds" in one_error_line(capsys, "score")
    assert parameter_count(4, (4, 2, 4)) == 4 * 4 + 4 + 4 * 2 + 2 + 2 * 4 + 4 + 4 * 4 + 4
    rewrite_config(model_dir, model={"n_inputs": 4, "hidden": [4, 2, 4], "activation": "relu"})
    assert load_model(model_dir).model_cfg.hidden == (4, 2, 4)  # the real size passes


def test_weights_of_another_shape_are_one_line(
    dataset: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bearing_core.autoencoder import Autoencoder, ModelConfig
    from bearing_core.model_io import save_model
    from bearing_core.scaling import Scaler
    from cli.main import main

    cfg = ModelConfig(n_inputs=4, hidden=(3, 3))  # same size or larger than (2, 2): passes the size check
    other = save_model(
        tmp_path / "other",
        Autoencoder(cfg),
        cfg,
        Scaler(mean=np.zeros(4), std=np.ones(4)),
        [f"B{i}_mean_abs" for i in range(1, 5)],
    )
    rewrite_config(other, model={"n_inputs": 4, "hidden": [2, 2], "activation": "relu"})
    assert main(["score", str(dataset), "--model", str(other)]) == 2
    assert "weights.pt does not fit config.json's model" in one_error_line(capsys, "score")


# ---- experiments: checked before Prefect starts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "--clients must be >= 1, got 0"),
        (["--only", "bogus"], "unknown experiments ['bogus']; this grid has: centralized, fedavg-iid"),
        (["--raw-dir", "{tmp}/missing"], "raw directory not found: {tmp}/missing"),
        (["--preset", "seed", "--raw-dir", "{tmp}/missing"], "raw directory not found: {tmp}/missing"),
        (["--sites", "0"], "sites: Input should be greater than or equal to 1"),
    ],
)
def test_experiments_arguments_are_checked_before_prefect_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    import flows.experiments
    from cli.main import main

    def no_flow(**kwargs: Any) -> None:
        raise AssertionError("the experiments flow (and Prefect's server) started")

    monkeypatch.setattr(flows.experiments, "experiments_flow", no_flow)
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["experiments", *args, "--out", str(tmp_path / "out")]) == 2
    assert message.format(tmp=tmp_path) in one_error_line(capsys, "experiments")
    assert not (tmp_path / "out").exists()


# ---- evaluate --ground-truth ------------------------------------------------------------------------------------


@pytest.fixture()
def scores(tmp_path: Path) -> Path:
    path = tmp_path / "scores.csv"
    rows = [f"2004-02-12T10:{10 * i:02d}:00,f{i},site_1,site_1/f{i},{i}.0,2.5,{i > 2},{i > 3},B1" for i in range(6)]
    path.write_text("timestamp,file,site,path,score,threshold,is_anomaly,alarm,top_channel\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"sites": [1, 2]}', "ground truth {gt}: seed: Field required"),
        ("[1, 2]", "ground truth {gt}: Input should be an object"),
        ("not json", "ground truth {gt}: Invalid JSON: expected ident at line 1 column 2"),
    ],
)
def test_evaluate_ground_truth_of_the_wrong_shape_is_one_line(
    scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    from cli.main import main

    truth = tmp_path / "ground_truth.json"
    truth.write_text(content)
    assert main(["evaluate", str(scores), "--ground-truth", str(truth)]) == 2
    assert one_error_line(capsys, "evaluate").endswith(message.format(gt=truth))


def test_evaluate_prints_site_names_escaped(scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bearing_core.synthetic import generate_demo
    from cli.main import main

    truth = generate_demo(tmp_path / "demo", sites=1, files_per_site=4, n_samples=256)
    document = truth.model_dump(mode="json")
    document["sites"] = {"site_1\x1b[2K\nsite_9 detected": document["sites"]["site_1"]}
    (tmp_path / "gt.json").write_text(json.dumps(document))
    assert main(["evaluate", str(scores), "--ground-truth", str(tmp_path / "gt.json")]) == 0
    out = capsys.readouterr().out
    assert "site_1\\x1b[2K\\nsite_9 detected" in out and "\x1b" not in out and "\nsite_9" not in out
    assert len(out.splitlines()) == 2  # header + the one site


# ---- train ------------------------------------------------------------------------------------------------------


def test_train_fraction_zero_is_an_error_not_the_default(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["train", str(dataset), "--train-fraction", "0", "--clients", "1000"]) == 2
    assert one_error_line(capsys, "train").endswith("train_fraction: Input should be greater than 0")


def test_printable_escapes_only_what_cannot_be_shown() -> None:
    from cli.console import printable

    assert printable("site_1/2003.10.22.12.06.24 Düsseldorf") == "site_1/2003.10.22.12.06.24 Düsseldorf"
    assert printable("a\nb\r\x1b[2K\u2028c\td") == "a\\nb\\r\\x1b[2K\\u2028c\\td"
    assert printable(Path("x\ny")) == "x\\ny"


@pytest.mark.integration
def test_train_natural_takes_the_client_count_from_the_sites(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: `--partition natural` failed unless --clients equalled the number of sites ("gives 1 clients ...
    but num_clients=4"); natural is one client per site, as in the pipeline."""
    from cli.main import main

    code = main(
        [
            "train",
            str(dataset),
            "--partition",
            "natural",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
            "--train-fraction",
            "1",
            "--out",
            str(tmp_path / "model"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "partition natural: 1 clients" in out
    assert (tmp_path / "model" / "weights.pt").is_file()
