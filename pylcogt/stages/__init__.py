"""Reduction stages: plain functions on in-memory frames, one module per step; no I/O."""
