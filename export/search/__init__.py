"""Search collections over exported pipelines: export (collection.py) and ingest (ingest.py)."""
