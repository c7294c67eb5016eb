"""The in-process simulation runtime: Flower's simulation engine with the ClientApps run in threads of this process.

Flower 1.42's ``run_simulation`` always runs ClientApps through Ray (``vce_api.start_vce`` builds a ``RayBackend``
whatever ``backend_name`` says), and Ray 2.55 listens on every interface, without authentication: its GCS
server, raylet and every worker on ``*``, its runtime-env agent on the host address, even with
``_node_ip_address="127.0.0.1"``. :func:`run_inprocess` runs the same engine with :class:`InProcessBackend`
instead, so a simulation opens no socket at all:

* the ServerApp runs in a thread against Flower's ``InMemoryGrid`` (an in-memory LinkState, no gRPC server),
  exactly as in ``flwr.simulation.run_simulation`` (``_main_loop``);
* Flower's ``vce_api.run_api`` moves messages between the LinkState and the backend: ``workers`` threads, each
  running one ClientApp call at a time, a failing call becoming an error reply (the server leaves the client out
  of that round), a hanging call holding its thread until it returns (the server stops waiting at the round
  timeout; the run ends once the call has returned, as with a busy Ray actor).

Differences from Ray worth knowing: ClientApps share this process, so a client that crashes the interpreter
(not one that raises) ends the run; torch's process-wide settings that the ClientApp changes (intra-op threads,
deterministic algorithms, the global RNG) are restored when the simulation ends. Each ClientApp call gets its own
copy of the message, as a Ray actor or a SuperNode would. Built on ``flwr==1.42.0`` internals (pinned exactly).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from queue import Queue

import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import run_serverapp_th
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid


class InProcessBackend(Backend):
    """Runs ClientApps in the calling process; Flower's engine calls :meth:`process_message` from ``num_workers``
    threads at once."""

    def __init__(self, workers: int) -> None:
        super().__init__({})
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.app: ClientApp | None = None
        self._torch_state: tuple[int, bool, torch.Tensor] | None = None

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:  # unused by flwr 1.42's engine (it runs num_workers loops); always ready
        return True

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self._torch_state = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.get_rng_state(),
        )
        self.app = app_fn()

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.app is None:
            raise ValueError("InProcessBackend.build() must run before messages are processed")
        try:
            reply = self.app(message=copy.deepcopy(message), context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:  # noqa: BLE001 - becomes the error reply of this client, as with Ray
            raise ClientAppException(str(ex)) from ex
        return reply, context

    def terminate(self) -> None:
        if self._torch_state is not None:
            threads, deterministic, rng = self._torch_state
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
            torch.set_rng_state(rng)
            self._torch_state = None


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, workers: int) -> None:
    """Run ``server_app`` against ``num_supernodes`` virtual nodes running ``client_app`` (partition ids
    0..n-1 in their node config), ClientApps on ``workers`` threads; returns when the ServerApp has finished and
    every ClientApp call has returned. An exception of the ServerApp is raised here."""
    limit = min(32, (os.cpu_count() or 1) + 4)  # flwr's run_api starts its worker loops in a default ThreadPoolExecutor
    if not 1 <= workers <= limit:
        raise ValueError(f"workers must be between 1 and {limit} on this machine, got {workers}")
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    # Messages the ServerApp creates are stamped with this process's task identity (run_simulation does the same)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    state_factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = state_factory.state()
    state.run_ids[run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run_id)
    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    nodes = vce_api._register_nodes(num_nodes=num_supernodes, state_factory=state_factory)
    node_stores = vce_api._register_node_info_stores(nodes_mapping=nodes, run=run)

    stop = threading.Event()
    errors: Queue[BaseException] = Queue()
    context = Context(run_id=run_id, node_id=0, node_config=UserConfig(), state=RecordDict(), run_config=UserConfig())
    server = run_serverapp_th(
        server_app_attr=None,
        server_app=server_app,
        server_app_context=context,
        grid=grid,
        app_dir="",
        f_stop=stop,
        exception_queue=errors,
        enable_tf_gpu_growth=False,
        ctx_queue=Queue(),
    )
    try:
        # returns once `stop` is set (the server thread sets it when it ends) and the worker threads are done
        vce_api.run_api(
            lambda: client_app, lambda: InProcessBackend(workers), nodes, state_factory, node_stores, stop, VceMetrics()
        )
    finally:
        stop.set()
    server.join()
    if not errors.empty():
        raise errors.get()
