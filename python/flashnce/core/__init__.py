"""Core of the tile contract: the axis tables (``spec``), numerics constants, relations, the
problem builder, the autograd path and the op registration. Imports nothing above itself."""
