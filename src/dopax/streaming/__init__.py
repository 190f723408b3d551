"""Streaming of predictive draws: sinks that store blocks and the bounded writer pool."""
