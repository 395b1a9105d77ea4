"""tuitrain training engine: PyTorch and the standard library only (no UI imports)."""
