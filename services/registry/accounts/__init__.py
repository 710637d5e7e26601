"""Users, API tokens (hashed at rest) and who is calling."""
