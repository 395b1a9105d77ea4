"""Modal screens: set the learning rate, help."""
