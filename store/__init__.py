"""The database: connection, migration runner and migrations, partitions, its settings."""
