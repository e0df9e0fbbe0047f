"""PatchRank data path: settings, loading, preprocessing, datasets, training, queue, sink, CLI."""
