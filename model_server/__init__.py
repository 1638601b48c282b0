"""StreamFlow model servers (KServe predictor and Feast transformer)."""
