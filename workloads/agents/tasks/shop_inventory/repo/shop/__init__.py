"""A tiny shop inventory."""

from shop.inventory import Item, total_value

__all__ = ["Item", "total_value"]
