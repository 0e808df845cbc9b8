"""Shipped engines (YAML): how an implementation holds a training step (costmodel.engine)."""
