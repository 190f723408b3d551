"""Device mesh, sharded block functions, and batch planning."""
