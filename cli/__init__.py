"""The `bearing` command: a thin layer over bearing_core and the Prefect flows."""
