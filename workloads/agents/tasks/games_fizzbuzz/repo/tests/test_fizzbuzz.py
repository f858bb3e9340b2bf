from games import fizzbuzz


def test_fizzbuzz_fifteen():
    words = fizzbuzz(15)
    assert len(words) == 15
    assert words[-1] == "FizzBuzz"
    assert words[:5] == ["1", "2", "Fizz", "4", "Buzz"]
