"""Running Triton: finding the server in the nvidia-pytriton wheel and starting it with the admin
key and restarts (server.py), and reloading a model whose Python-backend stub died (watchdog.py).

Imports no torch and nothing of the exporters: serving a repository needs only what the
Python-backend models need."""
