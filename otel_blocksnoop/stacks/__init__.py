"""Python stacks from Austin: the sampler process, its MOJO stream, loop-thread discovery."""
