"""Market data: store, sources, validation, resampling, provider."""
