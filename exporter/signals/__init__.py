"""The signals: what the world says. Purchase and API-call metrics read from the platform's
PostgreSQL (collectors/), the live Kraken probe and its recovery checks (kraken/), the reason
classifier and the post-incident impact report. Signals never act."""
