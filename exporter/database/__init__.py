"""The database layer: the pool and its health, transactions with time limits, migrations, and the
embedded PostgreSQL for development and tests."""
