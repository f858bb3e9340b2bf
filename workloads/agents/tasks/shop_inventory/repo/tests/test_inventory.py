from shop import Item, total_value


def test_total_value():
    items = [Item("pen", 1.5, 4), Item("book", 12.0, 2)]
    assert total_value(items) == 30.0


def test_empty_stock():
    assert total_value([]) == 0
