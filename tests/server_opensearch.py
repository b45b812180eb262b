"""Placeholder: the opensearch test server fixture lands here."""
