"""Fault injection for the reliability suite: an S3 proxy that fails chosen requests, a private Prefect
server that can be restarted mid-run, and small process helpers. Everything listens on 127.0.0.1 only."""
