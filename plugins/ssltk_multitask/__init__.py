"""ssltk_multitask plugin (under construction)."""
