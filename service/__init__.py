"""BentoML service for the exported minifigure classifier (serving deps only: no torch)."""
