"""The relationship graph: its values, stores and the in-memory index."""
