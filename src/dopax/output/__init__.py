"""Result layout (DataTree schema), builders and reopening of persisted results."""
