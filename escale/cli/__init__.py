"""Command-line entry points: ``escale`` (daemon) and ``escalectl`` (control)."""
