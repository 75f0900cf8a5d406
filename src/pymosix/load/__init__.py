"""Load information: sampling, smoothing and normalisation of a node's load."""
