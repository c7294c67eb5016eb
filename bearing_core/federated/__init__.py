"""Federated training with Flower (Message API): ClientApp, ServerApp, strategies, simulation and deployment.

Modules, one concept each:
    config       FederatedConfig (one run) and SimulationResources (simulation workers); run-config conversion
    messages     record keys and (de)serialisation of what clients and server exchange
    client_app   the ClientApp: scaler statistics, local training, holdout evaluation on the node's own partition
    strategies   flwr strategy selection + per-client metrics ledger + fault tolerance
    server_app   the ServerApp: federated scaling, R rounds, model + metrics.parquet
    simulation   run_federated (in-process Flower simulation) and the centralized baseline
    backend      the simulation runtime: Flower's engine with ClientApps in threads (no Ray, no socket)
    deployment   SuperLink / SuperNode / `flwr run` command lines for real sites
    launch       the SuperLink (Fleet API on --host, Control/Runtime on 127.0.0.1) and SuperNode processes
    guard        only bearing-fl's app runs: the app-bundle check and the guarded SuperExec

Only :mod:`config` is imported here (it is light); the others import torch and flwr.
"""

from bearing_core.federated.config import STRATEGIES, FaultInjection, FederatedConfig, SimulationResources

__all__ = ["STRATEGIES", "FaultInjection", "FederatedConfig", "SimulationResources"]
