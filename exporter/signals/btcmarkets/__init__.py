"""BTC Markets REST (API v3) access for the secondary-exchange probe: signing, outcome
classification and the client (the fake server lives in the drill package)."""
