"""ssltk_augment plugin (under construction)."""
