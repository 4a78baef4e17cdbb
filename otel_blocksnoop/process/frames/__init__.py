"""Python stacks read from the target's memory, with the offsets its interpreter publishes."""
