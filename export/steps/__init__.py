"""Python-backend models, copied into model repositories by the exporter.

Each folder is one kind of model: `model.py` (what Triton runs) and, where there is one, a
helper module beside it holding the model's actual processing. In the repository the helper
sits in the version folder next to model.py, which imports it by its bare name; the exporter
imports the same file from this package to check, before writing, that the served processing
reproduces the reference library's. One implementation, used both ways.

`writers.py` writes each step's folder: its model.py and helper, the files it loads, and its
config with the step's settings as parameters.
"""
