"""The anomaly-detection model: a small dense autoencoder over one row of inputs.

The default shape reproduces the reference notebook, ``n → 4 → 2 → 4 → n`` (8 → 4 → 2 → 4 → 8 on the IMS 1st
test): hidden layers use a non-linearity, the output layer is linear because the inputs are standardised
(unbounded, signed). Rows the model reconstructs badly are anomalous.

Weights travel between Flower client and server as a ``list[np.ndarray]`` in ``state_dict`` order
(:func:`get_weights` / :func:`set_weights`), the representation ``flwr`` ``ArrayRecord``\\ s are built from.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.config import HiddenWidths

_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "elu": torch.nn.ELU,
}


class ModelConfig(BaseModel):
    """Architecture of the autoencoder (saved with every model, so a model can always be rebuilt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_inputs: int = Field(..., gt=0, description="Width of the input and of the reconstruction")
    hidden: HiddenWidths = Field(
        (4, 2, 4), min_length=1, description="Widths of the hidden layers, encoder → bottleneck → decoder"
    )
    activation: Literal["relu", "tanh", "elu"] = Field("relu", description="Non-linearity after each hidden layer")


class Autoencoder(torch.nn.Module):
    """Dense autoencoder: ``Linear → act`` per hidden layer, then a linear output layer of width ``n_inputs``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = (cfg.n_inputs, *cfg.hidden)
        layers: list[torch.nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers.append(torch.nn.Linear(width_in, width_out))
            layers.append(_ACTIVATIONS[cfg.activation]())
        layers.append(torch.nn.Linear(widths[-1], cfg.n_inputs))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (shape ``(batch, n_inputs)``)."""
        return self.net(x)


def build_model(cfg: ModelConfig, seed: int) -> Autoencoder:
    """A freshly initialised model; the same ``seed`` always gives the same weights.

    Initialisation runs under a forked RNG, so building a model neither depends on nor disturbs the caller's
    global torch random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Autoencoder(cfg)
    return model


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's ``state_dict`` as float32 numpy arrays (copies), in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: torch.nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` (same order) into ``model``; shapes are checked strictly."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays ({', '.join(state)}), got {len(weights)}")
    new_state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, current), array in zip(state.items(), weights):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"weight '{name}': expected shape {tuple(current.shape)}, got {tuple(array.shape)}")
        new_state[name] = torch.as_tensor(array, dtype=current.dtype).clone()
    model.load_state_dict(new_state, strict=True)
