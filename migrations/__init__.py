"""Alembic migrations of the pilot result store. Run them with ``pilot.store.upgrade(url)`` (no alembic.ini)."""
