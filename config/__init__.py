"""Settings and the default catalogs (providers, modes, prices)."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
