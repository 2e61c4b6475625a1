"""The package version, a constant: read by the builder, compiled into the core's stamp."""

__version__ = "0.1.0"
