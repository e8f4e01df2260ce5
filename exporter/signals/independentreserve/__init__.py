"""Independent Reserve REST access for the secondary-exchange probe: signing, outcome
classification and the client (the fake server lives in the drill package)."""
