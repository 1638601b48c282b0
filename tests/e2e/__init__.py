"""End-to-end checks against a real cluster (``make e2e``); scripts here are run by hand or by make, not collected."""
