"""State kept between runs and processes: committed chunks for resume (``checkpoint``), one writer per output
(``lock``), input and model identities (``identity``), and the one SQLite opener (``sqlite_db``)."""
