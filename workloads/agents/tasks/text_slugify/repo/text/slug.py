"""URL slugs."""

import re


def slugify(title):
    """A URL slug of `title`: lower case words joined by single hyphens, nothing but [a-z0-9-]."""
    words = re.findall(r"[A-Za-z0-9]+", title)
    return "-".join(words)
