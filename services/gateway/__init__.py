"""The gateway: the platform's single front door and the versioned URLs of published models
(issue 6)."""
