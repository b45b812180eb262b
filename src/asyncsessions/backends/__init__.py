"""Session stores, one module each."""
