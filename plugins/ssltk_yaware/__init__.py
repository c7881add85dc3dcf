"""ssltk_yaware plugin (under construction)."""
