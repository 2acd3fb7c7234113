"""The TimescaleDB path issues exactly the statements checked in shared/design/TIMESCALEDB.md."""

from __future__ import annotations

from cityops.db import timescaledb_statements
from cityops.settings import DatabaseSettings
from ingest.contract import READING_KINDS


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
