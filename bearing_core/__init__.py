"""bearing_core: the plain library behind bearing-fl (no Prefect imports anywhere in this package).

Modules, one concept each:
    ims_reader   parse one raw NASA IMS snapshot file (fast path + precise error reasons)
    features     vectorised per-snapshot features (time domain + envelope spectrum bands)
    ingest       raw directory -> Parquet samples, features, quarantine (incremental, parallel, atomic)
    synthetic    IMS-format synthetic multi-site demo data with ground truth
    validation/  Great Expectations suites, checkpoint and Data Docs (GX imported only when validating)
    inputs       what the model sees: feature columns or raw samples, healthy training period
    partition/   client partitioners (iid, quantity, dirichlet, natural, blocks) and the client-file writer
    scaling      federated-mergeable feature scaling (count / mean / M2 per client)
    autoencoder  the model (default 8 -> 4 -> 2 -> 4 -> 8)
    training     local and centralized train / evaluate loops (FedProx proximal term)
    model_io     save / load a model directory (state_dict, config, scaler; weights_only loading)
    federated/   the Flower app (ServerApp / ClientApp, strategies), simulation and deployment helpers
    config       typed configuration (pydantic) with defaults under data/
    env          offline / project-local environment defaults
    io           atomic writes
    fingerprint  content hashes used as cache keys
"""

__version__ = "0.1.0"
