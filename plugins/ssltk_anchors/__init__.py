"""ssltk_anchors plugin (under construction)."""
