"""Bring a database to the newest schema through the alembic migrations, as production does."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from ess_common.db.session import make_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


async def upgrade(url: str, engine: AsyncEngine | None = None) -> None:
    """Run every pending migration; safe to call on an up-to-date database."""
    own = engine is None
    engine = engine or make_engine(url)
    try:
        async with engine.begin() as connection:
            config = alembic_config(url)

            def _upgrade(sync_conn: object) -> None:
                config.attributes["connection"] = sync_conn
                command.upgrade(config, "head")

            await connection.run_sync(_upgrade)
    finally:
        if own:
            await engine.dispose()
