"""Worked examples on real data (run as modules, e.g. ``python -m flashnce.examples.wordnet``).

    hierarchy  transitive closure, exclusion CSR, reconstruction mean rank / MAP (no deps)
    wordnet    WordNet noun-hierarchy embeddings (Nickel & Kiela 2017) trained with infonce
"""
