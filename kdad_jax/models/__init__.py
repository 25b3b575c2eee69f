"""Pure Flax modules: no losses, no data."""
