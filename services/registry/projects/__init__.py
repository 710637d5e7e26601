"""Projects, their members' roles, and the service groups inside them."""
