"""The autoencoder: architecture, deterministic init, weight (de)serialisation, model directory round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from bearing_core.autoencoder import Autoencoder, ModelConfig, build_model, get_weights, set_weights
from bearing_core.model_io import load_model, save_model
from bearing_core.scaling import Scaler


def test_default_architecture_is_the_notebooks_8_4_2_4_8_with_linear_output() -> None:
    model = build_model(ModelConfig(n_inputs=8), seed=0)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 4), (4, 2), (2, 4), (4, 8)]
    assert isinstance(model.net[-1], torch.nn.Linear)  # linear output: standardised inputs are signed
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 3
    assert model(torch.zeros(5, 8)).shape == (5, 8)


def test_custom_widths_and_activation() -> None:
    model = build_model(ModelConfig(n_inputs=4, hidden=(16, 3, 16), activation="tanh"), seed=1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 16), (16, 3), (3, 16), (16, 4)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_inputs": 0},
        {"n_inputs": 8, "hidden": ()},
        {"n_inputs": 8, "hidden": (4, 0)},
        {"n_inputs": 8, "activation": "gelu"},
        {"n_inputs": 8, "depth": 3},
    ],
)
def test_invalid_model_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        ModelConfig(**kwargs)


def test_same_seed_same_weights_other_seed_other_weights_and_global_rng_untouched() -> None:
    cfg = ModelConfig(n_inputs=8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model(cfg, 7), build_model(cfg, 7), build_model(cfg, 8)
    assert torch.rand(1).item() == expected_next.item()  # building models did not consume the caller's RNG
    for wa, wb in zip(get_weights(a), get_weights(b)):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(get_weights(a), get_weights(c)))


def test_get_set_weights_round_trip_and_shape_check() -> None:
    cfg = ModelConfig(n_inputs=8)
    src, dst = build_model(cfg, 0), build_model(cfg, 1)
    weights = get_weights(src)
    assert [w.shape for w in weights] == [(4, 8), (4,), (2, 4), (2,), (4, 2), (4,), (8, 4), (8,)]
    assert all(w.dtype == np.float32 for w in weights)
    set_weights(dst, weights)
    x = torch.randn(10, 8)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    weights[0] += 1.0  # get_weights returns copies: the model is not aliased
    assert not np.array_equal(get_weights(src)[0], weights[0])
    with pytest.raises(ValueError, match="expected 8 weight arrays"):
        set_weights(dst, weights[:-1])
    with pytest.raises(ValueError, match=r"expected shape \(4, 8\), got \(8, 4\)"):
        set_weights(dst, [weights[0].T, *weights[1:]])


def test_save_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    cfg = ModelConfig(n_inputs=4, hidden=(3, 2, 3), activation="elu")
    model = build_model(cfg, 3)
    scaler = Scaler(mean=np.array([0.1, 0.2, 0.3, 0.4]), std=np.array([1.0, 2.0, 3.0, 4.0]))
    columns = ["B1_mean_abs", "B2_mean_abs", "B3_mean_abs", "B4_mean_abs"]
    out = save_model(tmp_path / "models" / "v1", model, cfg, scaler, columns, {"threshold": 0.5})
    assert sorted(p.name for p in out.iterdir()) == [".bearing-output", "config.json", "scaler.json", "weights.pt"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["v1"]  # no staging dir left behind

    loaded = load_model(out)
    assert loaded.model_cfg == cfg and loaded.input_columns == columns and loaded.extra == {"threshold": 0.5}
    assert not loaded.model.training
    np.testing.assert_array_equal(loaded.scaler.mean, scaler.mean)
    np.testing.assert_array_equal(loaded.scaler.std, scaler.std)
    x = torch.randn(32, 4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)

    # saving again replaces the directory as a whole
    save_model(out, build_model(cfg, 4), cfg, scaler, columns, {"threshold": 0.7})
    assert load_model(out).extra == {"threshold": 0.7}
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["v1"]


def test_load_model_detects_tampering_and_missing_files(tmp_path) -> None:
    cfg = ModelConfig(n_inputs=2, hidden=(1,))
    out = save_model(tmp_path / "m", build_model(cfg, 0), cfg, Scaler.identity(2), ["a", "b"], {})
    with (out / "weights.pt").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="sha256"):
        load_model(out)
    (out / "scaler.json").unlink()
    with pytest.raises(FileNotFoundError, match="scaler.json"):
        load_model(out)


def test_save_model_rejects_mismatched_columns(tmp_path) -> None:
    cfg = ModelConfig(n_inputs=3)
    with pytest.raises(ValueError, match="3 inputs but 2 input columns"):
        save_model(tmp_path / "m", Autoencoder(cfg), cfg, Scaler.identity(3), ["a", "b"], {})
    assert not (tmp_path / "m").exists()
