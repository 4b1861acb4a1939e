"""Evaluation and visualisation: kNN/linear probes, embeddings export, PCA maps, change maps."""
