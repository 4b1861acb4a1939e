"""STAC-driven chip datasets: plan a UTM grid, read+mask+harmonise, store, stats, data card."""
