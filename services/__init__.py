"""ModelCloud platform services. Each subpackage but ``common`` is one deployable app;
they never import each other and talk over HTTP and events (see docs/ARCHITECTURE.md)."""
