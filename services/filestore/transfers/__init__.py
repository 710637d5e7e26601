"""Presigned direct transfers to S3 and upload packs of many small files."""
