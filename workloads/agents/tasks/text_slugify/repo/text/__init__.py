"""Text helpers."""

from text.slug import slugify

__all__ = ["slugify"]
