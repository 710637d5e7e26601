"""The file store service: git-like push/pull of model files by model and version, on S3
(issue 4)."""
