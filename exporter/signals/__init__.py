"""The signals: what the world says. Purchase and API-call metrics read from the platform's
PostgreSQL (collectors/), the live probes of the exchanges and their recovery checks behind one
exchange-neutral seam (exchange.py; each exchange a package such as kraken/, listed in
integrations.py), the reason classifier and the post-incident impact report. Signals never act."""
