"""The wire contract shared by ingest and the simulator: where its topics live on a broker."""
