"""Running on Flower's deployment engine: SuperLink and SuperNodes as separate processes."""
