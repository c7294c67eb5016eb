"""bearing_core: the plain library behind bearing-fl (no Prefect imports anywhere in this package).

Modules, one concept each:
    ims_reader   parse one raw NASA IMS snapshot file (fast path + precise error reasons)
    features     vectorised per-snapshot features (time domain + envelope spectrum bands)
    ingest       raw directory -> Parquet samples, features, quarantine (incremental, parallel, atomic)
    synthetic    IMS-format synthetic multi-site demo data with ground truth
    config       typed configuration (pydantic) with defaults under data/
    env          offline / project-local environment defaults
    io           atomic writes
"""

__version__ = "0.1.0"
