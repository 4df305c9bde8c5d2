"""The hosted checkout pages the gateway serves (pages.py): templates/ (Jinja2, escaped),
static/ (the page's script and style, served from /checkout/assets/)."""
