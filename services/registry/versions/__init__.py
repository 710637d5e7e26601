"""Service versions: an uploaded code bundle, its interface and build spec, and the
build/publish lifecycle that turns it into an API version."""
