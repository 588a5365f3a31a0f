"""Constructor-argument checks for hdkd.nn modules (ValueError naming the argument)."""


def positive_int(module: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{module}: expected {name} to be a positive int, got {value!r}")
    return value


def odd_kernel(module: str, name: str, value) -> int:
    positive_int(module, name, value)
    if value % 2 == 0:
        raise ValueError(f"{module}: expected an odd {name} (padding k//2 keeps the size), "
                         f"got {value}")
    return value
