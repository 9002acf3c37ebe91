"""Compliance: the hash-chained audit trail, policies, deletion requests and their signed reports."""
