"""Alembic migrations of the reader-study database (run by :class:`..db.StudyDB` on open)."""
