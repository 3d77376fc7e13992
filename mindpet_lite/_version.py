"""The toolkit's version, in a module of its own so that adapter metadata can record it without
importing the package face."""
__version__ = "0.1.0"
