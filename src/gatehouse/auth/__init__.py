"""Caller authentication: API keys, scopes and tenant restrictions (DESIGN §11)."""
