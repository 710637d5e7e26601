"""Shared plumbing for every service: settings base, database engine, event bus, outbox,
problem+json, logging, health. A library with no app of its own; it imports only proto."""
