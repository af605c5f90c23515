"""Fine-tune artifacts: validation, the registry, deploy / roll back / retire."""
