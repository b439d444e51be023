"""Datasets: the normalised table schemas, atomic Parquet I/O, importers and the embedded sample."""
