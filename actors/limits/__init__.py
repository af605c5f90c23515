"""Limits per key and per account (issue 19): the reserve/settle engine in Redis (``store``)."""
