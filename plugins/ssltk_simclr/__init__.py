"""ssltk_simclr plugin (under construction)."""
