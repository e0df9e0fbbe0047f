"""Entry points and configuration: Serve app builder, serve config, Train launcher."""
