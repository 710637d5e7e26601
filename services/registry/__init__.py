"""The registry service: projects, service groups, model services, versions and their
build/publish lifecycle (issue 3)."""
