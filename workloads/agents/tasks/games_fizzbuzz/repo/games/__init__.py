"""Counting games."""

from games.fizzbuzz import fizzbuzz

__all__ = ["fizzbuzz"]
