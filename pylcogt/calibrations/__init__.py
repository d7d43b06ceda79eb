"""Building master calibrations: stacking frames (:mod:`.stack`); no file I/O here."""
