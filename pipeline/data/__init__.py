"""Loading, preprocessing and data sets: files on disk -> normalised slices."""
