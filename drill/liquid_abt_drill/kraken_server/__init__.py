"""A Kraken-compatible REST server for tests and drills: switchable into the runbooks' failure modes."""
