"""Quality-control pictures and the night's HTML page (``pylcogt qc``).

:mod:`~pylcogt.qc.inventory` reads the registry, :mod:`~pylcogt.qc.metrics` computes the numbers,
:mod:`~pylcogt.qc.render` draws the PNG files, :mod:`~pylcogt.qc.page` writes the page and
:mod:`~pylcogt.qc.night` puts them together.
"""
