"""The Ray engine: the driver (``driver``), Ray Data sources, sinks and the merge of parts (``dataset``), and
the scoring actors (``scoring``)."""
