"""Backends the router can send a chat request to; each implements `Backend` from `base`."""
