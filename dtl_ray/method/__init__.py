"""The method in plain PyTorch, pandas and numpy: no Ray."""
