"""Differentially private releases: the engine that charges the ledger, and the queries it answers."""
