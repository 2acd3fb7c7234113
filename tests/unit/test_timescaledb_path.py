"""The TimescaleDB path issues exactly the statements checked in shared/design/TIMESCALEDB.md."""

from __future__ import annotations

import pytest

from store.db import (
    MigrationError,
    StoragePath,
    TimescaleDBState,
    choose_storage_path,
    timescaledb_statements,
)
from store.settings import DatabaseSettings
from wire.contract import READING_KINDS


def test_statements_per_readings_table_match_the_reviewed_forms() -> None:
    settings = DatabaseSettings(compress_after_days=7, retention_days=400)
    texts = [statement.as_string() for statement in timescaledb_statements(settings)]
    assert texts[0] == "create extension if not exists timescaledb"
    for i, kind in enumerate(READING_KINDS):
        hypertable, compress, compression_policy, retention = texts[1 + 4 * i : 5 + 4 * i]
        assert hypertable == (
            f"select create_hypertable('{kind.table}', by_range('ts', interval '1 day'))"
        )
        assert compress == (
            f'alter table "{kind.table}" set (timescaledb.compress, '
            "timescaledb.compress_segmentby = 'device_id', "
            "timescaledb.compress_orderby = 'ts desc')"
        )
        assert compression_policy == (
            f"select add_compression_policy('{kind.table}', compress_after => interval '7 days')"
        )
        assert retention == (
            f"select add_retention_policy('{kind.table}', drop_after => interval '400 days')"
        )
    assert len(texts) == 1 + 4 * len(READING_KINDS)


@pytest.mark.parametrize(
    ("wanted", "state", "path"),
    [
        ("auto", TimescaleDBState.READY, StoragePath.TIMESCALEDB),
        ("auto", TimescaleDBState.ABSENT, StoragePath.POSTGRESQL),
        ("required", TimescaleDBState.READY, StoragePath.TIMESCALEDB),
        ("off", TimescaleDBState.READY, StoragePath.POSTGRESQL),
        ("off", TimescaleDBState.NOT_PRELOADED, StoragePath.POSTGRESQL),
        ("off", TimescaleDBState.ABSENT, StoragePath.POSTGRESQL),
    ],
)
def test_storage_path_follows_the_setting_and_the_server(
    wanted: str, state: TimescaleDBState, path: StoragePath
) -> None:
    assert choose_storage_path(wanted, state) is path


@pytest.mark.parametrize("wanted", ["auto", "required"])
def test_installed_but_not_preloaded_fails_with_the_line_to_add(wanted: str) -> None:
    with pytest.raises(MigrationError) as refused:
        choose_storage_path(wanted, TimescaleDBState.NOT_PRELOADED)
    assert "shared_preload_libraries = 'timescaledb'" in str(refused.value)
    assert 'database.timescaledb = "off"' in str(refused.value)


def test_required_without_timescaledb_fails() -> None:
    with pytest.raises(MigrationError, match="has no TimescaleDB"):
        choose_storage_path("required", TimescaleDBState.ABSENT)
