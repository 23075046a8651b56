"""voicebridge: the service (config, call pipeline, backends, doors, metrics, app)."""
