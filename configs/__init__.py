"""YAML configs shipped as package data (read with ``tokenlm.config.load_config``)."""
