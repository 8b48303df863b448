"""Data, training, metrics and tracking utilities for the equivariant OCELOT toolkit."""
