"""ssltk_genesis plugin (under construction)."""
