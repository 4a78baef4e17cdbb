"""The watched process from outside: its identity, /proc, its memory, CPython layouts."""
