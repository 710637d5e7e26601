"""Content-addressed blob storage: a file's bytes are stored once, under their SHA-256."""
