"""Console connector: prints a sink's changes to stdout (``connector = 'console'``)."""
