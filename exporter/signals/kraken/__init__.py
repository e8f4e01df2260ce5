"""Kraken REST access for the live probe and the recovery check: signing, outcome classification,
the client, the probe, and a Kraken-compatible fake server for tests and drills."""
