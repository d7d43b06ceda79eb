"""FITS reading and writing; the only package that touches files."""
