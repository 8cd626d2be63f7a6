"""The agency side of pplink: runs behind each agency's firewall, never shares identifiers."""
