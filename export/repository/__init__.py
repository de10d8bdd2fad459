"""The Triton model repository on disk: ModelConfig builders (config.py), model folders and
staged writes (layout.py), and the record each export leaves in its ensembles (records.py).

The lowest layer of the exporter: it knows Triton's file layout and config format, and nothing
about models, runtimes or the server."""
