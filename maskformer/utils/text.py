"""Wording of messages."""


def plural(count: int, noun: str) -> str:
    """'1 class', '2 classes', '0 segments'."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{count} {noun}s"
