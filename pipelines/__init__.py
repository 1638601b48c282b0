"""StreamFlow pipeline steps: data generation, ingestion, validation, snapshots and the `streamflow` CLI."""
