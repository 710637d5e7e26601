"""The seed's import name for the model-file pipe: ``from bolt4ds.pipe import ModelFile``."""
