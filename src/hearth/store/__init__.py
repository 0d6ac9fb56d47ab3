"""Storage: the embedded SQLite file by default, PostgreSQL at scale, behind one interface."""
