"""The development pairs: generated demo shapes, real digits and real icons."""
