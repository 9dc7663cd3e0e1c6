"""Prepared-data side of torchrec-mdr: dataset spec, validation, parquet reader, Batch."""
