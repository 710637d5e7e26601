"""Model files by project, model, version and path, each pointing at a content blob."""
