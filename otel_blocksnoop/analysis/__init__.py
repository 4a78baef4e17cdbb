"""What a block means: the code that blocked, the cause, hangs, the trace link, clocks."""
