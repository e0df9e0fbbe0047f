"""Thin Ray wrappers around pipeline/ and model/."""
