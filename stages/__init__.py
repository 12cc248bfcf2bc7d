"""minifig pipeline stages; each module is one `dvc.yaml` stage or a helper they share."""
