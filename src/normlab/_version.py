"""The package version, in a module of its own at the bottom of the layers, so that any layer
can read it without importing the root package (which imports the layers above)."""

__version__ = "0.1.0"
