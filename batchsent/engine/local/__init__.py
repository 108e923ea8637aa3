"""The local engine: one process scores a file (``job``) or every file of a folder, glob or prefix
(``folders``)."""
