"""``eligibility bench``: synthetic data, each case measured next to its floor, JSON results."""
