"""Named experiments, the method registry, the runner and the CLI."""
