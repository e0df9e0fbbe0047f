"""The streaming service: messages, Redis streams, consumer, Parquet sink, result queries."""
