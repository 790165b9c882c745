"""Reading and writing artifacts: atomic files, checkpoints, Parquet, provenance."""
