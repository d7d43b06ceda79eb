"""The calibration registry: models, the engine, and queries that take a Session."""
