"""The report of a scored output: its statistics (``stats``) and the HTML page (``page``)."""
