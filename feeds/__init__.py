"""Quote sources: the synthetic market, file replay readers, (later) live venue clients."""
