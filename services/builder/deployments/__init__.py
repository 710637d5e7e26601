"""Deployments: the replicas that should run for each published version, kept running."""
