"""Tools around the product, not part of a round: synthetic data, attacks, linkage evaluation, the demo."""
