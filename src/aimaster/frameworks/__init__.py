"""Framework adapters (PyTorch, TensorFlow). Each imports its framework lazily."""
