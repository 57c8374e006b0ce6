"""The development pairs: generated demo shapes and real digits."""
