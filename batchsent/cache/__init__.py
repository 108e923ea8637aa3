"""The prediction cache: one score per distinct text and model. A SQLite file for the local engine
(``store``), a shared folder or object prefix for Ray (``shared``), and the per-chunk reuse both serve
(``reuse``)."""
