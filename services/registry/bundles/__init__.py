"""Uploaded code bundles: checked whole before anything is written, stored by content."""
