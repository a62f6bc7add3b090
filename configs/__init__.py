"""plandiff.configs: YAML presets."""
