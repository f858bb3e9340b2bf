"""Stock and what it is worth."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int


def total_value(items):
    """What the stock is worth: each item's price times its quantity, summed."""
    return sum(item.quantity for item in items)
