"""Data: file formats and compression (``formats``), streaming readers and atomic writers (``readers``,
``writers``), local and object storage (``storage``), and which files a folder, glob or prefix selects
(``sources``). Nothing here knows a model or an engine."""
