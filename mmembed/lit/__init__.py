"""Lightning layer: the shared training module and callbacks."""
