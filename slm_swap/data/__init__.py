"""Datasets: source converters (xLAM, BFCL) into one `Example` shape, rows per track, splits."""
