"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ess_common.db.migrate import alembic_config
from ess_common.db.models import Base
from ess_common.db.session import make_engine


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


def _range_foreign_keys(connection: Connection) -> list[object]:
    return [fk["name"] for fk in inspect(connection).get_foreign_keys("ranges")]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_ranges_hold_no_foreign_key_and_going_back_drops_ranges_without_a_file(
    db_url: str,
) -> None:
    """Migration 0009 drops the ranges' per-row check of their file; going back to 0008 puts it
    back, deleting first the ranges whose file is gone (the check would refuse them)."""
    engine = make_engine(db_url)
    row = (
        "INSERT INTO ranges (file_id, request_id, scope, lfn, first_event, last_event, "
        "object_key, size, adler32, created_at) VALUES (:file, NULL, 's', 'f.root', 1, 10, "
        ":key, 1, '00000001', CURRENT_TIMESTAMP)"
    )
    try:
        async with engine.begin() as connection:
            assert await connection.run_sync(_range_foreign_keys) == []
            await connection.execute(text(row), {"file": 999_999, "key": "gone"})
            await connection.execute(text(row), {"file": None, "key": "on-demand"})

            def back_and_forth(sync_connection: Connection) -> list[object]:
                config = alembic_config(db_url)
                config.attributes["connection"] = sync_connection
                command.downgrade(config, "0008")
                restored = _range_foreign_keys(sync_connection)
                command.upgrade(config, "head")
                return restored

            assert await connection.run_sync(back_and_forth) == ["fk_ranges_file_id_files"]
            keys = (await connection.execute(text("SELECT object_key FROM ranges"))).all()
            assert [k for (k,) in keys] == ["on-demand"]
            assert await connection.run_sync(_range_foreign_keys) == []
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()
