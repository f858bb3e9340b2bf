from text import slugify


def test_slugify_lowercases():
    assert slugify("Hello World") == "hello-world"


def test_slugify_punctuation():
    assert slugify("  fast, cheap & good!  ") == "fast-cheap-good"
