"""Models: scikit-learn anomaly models with safe persistence."""
