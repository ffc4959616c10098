"""Defaults of a simulated federation, in one light module (the CLI reads them to build --help)."""

DEFAULT_SITES = 3  # hospitals in a simulated federation
DEFAULT_STUDIES_PER_SITE = 60  # mean studies per hospital (each site draws x0.7-1.3 of it)
DEFAULT_MATRIX = 128  # rows = columns of the synthetic slices; 512 for realistic series
DEFAULT_SEED = 0
