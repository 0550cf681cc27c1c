"""Helpers for tests and drills, kept out of the product's path: fault injection."""
