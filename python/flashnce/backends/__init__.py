"""Kernel backends behind ``flashnce.pairwise_lse``; chosen by ``flashnce.dispatch``."""
