"""ssltk_moco plugin (under construction)."""
