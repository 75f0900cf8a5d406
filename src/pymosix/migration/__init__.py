"""Process migration: jobs in their own PID namespace, moved with CRIU between node agents."""
