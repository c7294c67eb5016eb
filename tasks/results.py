"""How every cached task stores its result: plain JSON, in the project's Prefect storage, never pickle.

A Prefect cache record names its own serializer (``metadata.serializer``) and Prefect decodes the result with it:
a record saying ``"type": "pickle"``, or a JSON serializer whose ``jsonlib`` / ``object_decoder`` names some other
callable, runs code when it is read. The serializer of the task alone (``result_serializer="json"``) therefore
does not protect a cache directory that someone else can write to. Here:

* results are written with :data:`RESULT_SERIALIZER` (stdlib ``json``, no object hooks: nothing is imported or
  constructed on load; a task returning anything but JSON values fails at once instead of being pickled);
* each record's metadata goes to :class:`JsonRecordMetadata` (the cache policy's ``key_storage``), whose reads
  refuse any metadata naming another serializer, and any record whose result file is not JSON, before Prefect
  parses them. Prefect takes a refused record for a missing one: the task runs again and writes a good record.

Where: results in Prefect's ``results.local_storage_path``, metadata in its ``metadata/`` sub-directory, both
resolved when used; :func:`bearing_core.env.configure_environment` (and the Makefile) set that path to
``$PREFECT_HOME/storage``, i.e. the project's ``.prefect/storage``, next to the run history.

Use: ``@task(**persisted(SomeCachePolicy()), ...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings

RESULT_SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)
"""Plain ``json.dumps`` / ``json.loads``, no object hooks."""

METADATA_DIR = "metadata"
"""Sub-directory of the result storage holding the records' metadata."""

_EXPECTED_SERIALIZER = RESULT_SERIALIZER.model_dump(mode="json")


class RefusedRecord(ValueError):
    """A cache record not written by this project's JSON serializer (tampered, foreign or corrupt)."""


def _json(content: bytes, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise RefusedRecord(f"{what} is not JSON ({type(exc).__name__})") from None


def check_metadata(content: bytes, where: str) -> bytes:
    """``content`` when it is the metadata of a record written with :data:`RESULT_SERIALIZER` whose result file
    (when local) is JSON; :class:`RefusedRecord` otherwise."""
    metadata = _json(content, f"cache record {where}")
    serializer = metadata.get("serializer") if isinstance(metadata, dict) else None
    if serializer != _EXPECTED_SERIALIZER:
        raise RefusedRecord(f"cache record {where} names serializer {serializer!r}, not plain JSON")
    if metadata.get("storage_block_id") is not None or not isinstance(metadata.get("storage_key"), str):
        raise RefusedRecord(f"cache record {where} does not point to a result in local storage")
    result = Path(metadata["storage_key"])
    if result.is_absolute() and result.is_file():
        _json(result.read_bytes(), f"cache result {result}")
    return content


class JsonRecordMetadata(LocalFileSystem):
    """Local storage of cache-record metadata under ``basepath`` (default: ``<results.local_storage_path>/
    metadata``, resolved when used) that only hands out metadata passing :func:`check_metadata`."""

    _block_type_name = "Bearing JSON Record Metadata"  # its own block type: never replaces LocalFileSystem

    def _resolve_path(self, path: str) -> Path:
        if self.basepath:
            return super()._resolve_path(path)
        base = Path(get_current_settings().results.local_storage_path) / METADATA_DIR
        return self.model_copy(update={"basepath": str(base)})._resolve_path(path)

    async def aread_path(self, path: str) -> bytes:
        return check_metadata(await super().aread_path(path), path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return check_metadata(super().read_path(path, _sync=True), path)


UNCACHED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
"""Task options of a task that must run every time (a live action: a SuperNode window, a round, a champion's
current scores): no cache record, no stored result."""


def persisted(cache_policy: CachePolicy) -> dict[str, Any]:
    """Task options of a cached task: ``cache_policy`` with its metadata in :class:`JsonRecordMetadata`, results
    persisted with :data:`RESULT_SERIALIZER`."""
    return {
        "cache_policy": cache_policy.configure(key_storage=JsonRecordMetadata()),
        "persist_result": True,
        "result_serializer": RESULT_SERIALIZER,
    }
