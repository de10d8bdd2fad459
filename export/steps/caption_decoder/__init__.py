"""See export/steps/__init__.py."""
