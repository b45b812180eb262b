"""Placeholder: the dynamodb test server fixture lands here."""
