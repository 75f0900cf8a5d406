"""Command-line tools: thin argument parsing over the control socket, each with --json."""
