"""Clinical evaluation: pure functions over parsed resources, no I/O."""
