"""Ingest: topic grammar, payload decoding, batching, COPY writer, quarantine."""
