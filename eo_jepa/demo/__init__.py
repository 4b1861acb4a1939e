"""Built-in demo data (synthetic Sentinel-2-like scenes) and the offline quickstart."""
