"""The watched process from outside: target, identity, memory, ELF files, layouts, context."""
