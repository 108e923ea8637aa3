"""The engines and their one contract: the checks before a model loads (``checks``), what results depend on
(``fingerprint``), the run record (``record``), the summary (``summary``) and the manifest (``manifest``);
``local`` and ``ray`` run the chunks; ``runner.run`` is the one entry point for both."""
