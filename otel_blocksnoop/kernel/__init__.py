"""The kernel side: the BPF programs, their loading, and reading their maps."""
