"""Single source of the package version (read by pyproject and ``eo_jepa.__version__``)."""

__version__ = "0.1.0"
