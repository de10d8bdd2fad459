"""See export/python_models/__init__.py."""
