"""Running workers as supervised local processes: manifests, the supervisor, config edits."""
