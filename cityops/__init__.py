"""cityops: the shell around the platform (CLI, settings, database, services)."""
