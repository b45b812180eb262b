"""Placeholder: the datastore test server fixture lands here."""
